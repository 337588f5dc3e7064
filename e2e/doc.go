// Package e2e holds the privileged end-to-end tests and benchmarks of the
// wiremesh command: the seed scenario (routers with child prefixes, a
// container behind a bridge, a spoke behind NAT) built from network
// namespaces with internal/netlab, and kernel-mode throughput with iperf3.
// They need root and skip, saying so, without it.
package e2e
