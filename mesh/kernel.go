package mesh

import (
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/control/api"
)

// SkippedRoute is a peer's prefix that a kernel-mode node does not route
// through its TUN device, and why (for example "overlaps 172.24.0.0/16
// directly connected on docker0": the host reaches that network locally,
// and routing it into the tunnel would cut it off).
type SkippedRoute struct {
	Prefix netip.Prefix
	Reason string
}

// desiredRoutes returns the prefixes a kernel-mode node routes through its
// TUN device: every peer's allowed IPs (tunnel addresses and child
// prefixes) except those inside the node's own address prefixes, which
// the kernel already routes on-link through the device. Sorted, no
// duplicates.
func desiredRoutes(addrs []netip.Prefix, peers map[api.Key]wgPeer) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range peers {
	next:
		for _, r := range p.AllowedIPs {
			r = r.Masked()
			for _, a := range addrs {
				if a.Masked().Contains(r.Addr()) && r.Bits() >= a.Bits() {
					continue next
				}
			}
			out = append(out, r)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
