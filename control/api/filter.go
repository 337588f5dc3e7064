package api

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// EventFilter is the watch event that replaces the receiving member's
// inbound filter (WatchEvent.Filter; nil: the zone has no policy any more,
// accept everything).
const EventFilter = "filter"

// Filter protocols (FilterRule.Proto).
const (
	ProtoAny  = "any"  // every IP protocol; Ports is then empty
	ProtoTCP  = "tcp"  // TCP; Ports are destination ports
	ProtoUDP  = "udp"  // UDP; Ports are destination ports
	ProtoICMP = "icmp" // ICMP for IPv4, ICMPv6 for IPv6; Ports is empty
)

// Filter is the inbound filter a member enforces on traffic arriving from
// the mesh for its own tunnel addresses and for its child prefixes (the
// service compiles it from the zone's policy, per member).
//
// Semantics, the same for nftables and for a userspace packet filter:
//
//   - A packet arriving from the mesh whose destination is one of the
//     member's addresses or inside one of its child prefixes is accepted
//     when it belongs to a connection (or ICMP exchange) the member or the
//     network behind it started, or when it is related to one (ICMP errors):
//     the enforcer is stateful, and replies to allowed connections always
//     pass in both directions. Otherwise it starts a new flow, which is
//     accepted when at least one rule matches it and dropped when none does.
//   - A rule matches when the source address is inside one of Src, the
//     destination address inside one of Dst, the protocol is Proto (any: all
//     protocols) and, for tcp and udp, the destination port is inside one of
//     Ports (empty: every port). IPv4 and IPv6 prefixes may be mixed in one
//     rule; each family matches its own.
//   - Src and Dst are sorted and hold no prefix inside another, so each maps
//     to an nftables interval set (`ip saddr @src4 ip daddr @dst4 tcp dport
//     {80, 8000-8099} accept`), and Ports to an interval set of ports.
//
// A nil *Filter in a snapshot means the zone has no policy: accept
// everything (as before policies existed). A non-nil Filter with no Rules
// accepts no new inbound flows at all.
type Filter struct {
	Rules []FilterRule `json:"rules"`
}

// FilterRule is one allowed kind of inbound flow. See Filter.
type FilterRule struct {
	// Rule is the 1-based index of the policy rule it was compiled from
	// (for per-rule counters and diagnostics); several FilterRules may come
	// from one policy rule.
	Rule  int            `json:"rule"`
	Src   []netip.Prefix `json:"src"`
	Dst   []netip.Prefix `json:"dst"`
	Proto string         `json:"proto"`
	Ports []PortRange    `json:"ports,omitempty"`
}

// PortRange is an inclusive range of ports, First <= Last. Its text form is
// "80" (First == Last) or "8000-8099".
type PortRange struct {
	First, Last uint16
}

func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return strconv.Itoa(int(r.First)) + "-" + strconv.Itoa(int(r.Last))
}

// Contains reports whether port is inside r.
func (r PortRange) Contains(port uint16) bool { return r.First <= port && port <= r.Last }

// MarshalText encodes r as "80" or "8000-8099".
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses "80" or "8000-8099" (ports 1 to 65535).
func (r *PortRange) UnmarshalText(b []byte) error {
	p, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*r = p
	return nil
}

// ParsePortRange parses "80" or "8000-8099": ports 1 to 65535, in decimal
// without signs or leading zeros, first <= last.
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(s, "-")
	a, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := parsePort(last)
	if err != nil {
		return PortRange{}, fmt.Errorf("port range %q: %w", s, err)
	}
	if b < a {
		return PortRange{}, fmt.Errorf("port range %q: first port above the last", s)
	}
	return PortRange{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || (s[0] == '0') {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a port (1-65535)", s)
		}
	}
	n, _ := strconv.Atoi(s)
	if n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return uint16(n), nil
}

// Allows reports whether f lets a new flow from src to dst through: proto
// is ProtoTCP, ProtoUDP or ProtoICMP (anything else matches only rules of
// ProtoAny), port the destination port (ignored unless tcp or udp). It
// returns the index in f.Rules of the first matching rule, or -1. A nil
// filter allows everything (-1, true). This is the reference for
// enforcers; it is linear in the size of f.
func (f *Filter) Allows(src, dst netip.Addr, proto string, port uint16) (int, bool) {
	if f == nil {
		return -1, true
	}
	src, dst = src.Unmap(), dst.Unmap()
	for i, r := range f.Rules {
		if r.matches(src, dst, proto, port) {
			return i, true
		}
	}
	return -1, false
}

func (r *FilterRule) matches(src, dst netip.Addr, proto string, port uint16) bool {
	if r.Proto != ProtoAny && r.Proto != proto {
		return false
	}
	if !prefixesContain(r.Src, src) || !prefixesContain(r.Dst, dst) {
		return false
	}
	if len(r.Ports) == 0 || (proto != ProtoTCP && proto != ProtoUDP) {
		return len(r.Ports) == 0
	}
	for _, pr := range r.Ports {
		if pr.Contains(port) {
			return true
		}
	}
	return false
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
