// Package ipam is wiremesh's pure allocation logic: child-prefix validation,
// tunnel address pools (IPv4 and IPv6 ULA) handed out lowest-free, and a
// per-zone registry of child prefixes that rejects overlaps; it does no I/O
// and none of its types are safe for concurrent use (callers lock).
package ipam
