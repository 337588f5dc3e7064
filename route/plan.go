package route

import (
	"fmt"
	"net/netip"
	"slices"
)

// current is what a table found on its interface before reconciling.
type current struct {
	present   []netip.Prefix // addresses on the interface now (any owner)
	ours      []netip.Prefix // addresses this table added earlier
	routes    []netip.Prefix // routes carrying RouteProtocol on the interface
	connected []Connected    // networks directly connected on other interfaces
}

// plan is the set of changes that takes current to a normalized Desired.
type plan struct {
	addAddrs, delAddrs   []netip.Prefix
	addRoutes, delRoutes []netip.Prefix
	routes               []netip.Prefix // routes installed once the plan is done
	skipped              []Skip
}

// makePlan is the pure core of Apply: desired vs current → adds, removes, skips.
// Addresses present but not ours are left alone (neither added nor removed);
// ours that are no longer wanted are removed. Desired routes overlapping a
// connected network are skipped, and removed if we had installed them.
func makePlan(n normalized, cur current) plan {
	var p plan
	p.addAddrs = minus(n.addrs, cur.present)
	p.delAddrs = minus(intersect(cur.ours, cur.present), n.addrs)
	for _, r := range n.routes {
		if reason := overlapReason(r, cur.connected); reason != "" {
			p.skipped = append(p.skipped, Skip{Prefix: r, Reason: reason})
			continue
		}
		p.routes = append(p.routes, r)
	}
	have := sortedUnique(cur.routes)
	p.addRoutes = minus(p.routes, have)
	p.delRoutes = minus(have, p.routes)
	return p
}

// overlapReason says why r must not be routed through the tunnel, or "".
// The most specific overlapping network is named (ties: lowest address).
func overlapReason(r netip.Prefix, connected []Connected) string {
	var best *Connected
	for i := range connected {
		c := &connected[i]
		if !c.Prefix.IsValid() || !c.Prefix.Overlaps(r) {
			continue
		}
		if best == nil || c.Prefix.Bits() > best.Prefix.Bits() ||
			(c.Prefix.Bits() == best.Prefix.Bits() && comparePrefix(c.Prefix, best.Prefix) < 0) {
			best = c
		}
	}
	if best == nil {
		return ""
	}
	if best.Interface == "" {
		return fmt.Sprintf("overlaps %s directly connected on this host", best.Prefix)
	}
	return fmt.Sprintf("overlaps %s directly connected on %s", best.Prefix, best.Interface)
}

// minus returns the elements of a (sorted, unique) that are not in b.
func minus(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func intersect(a, b []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return sortedUnique(out)
}

// longestMatch returns the most specific prefix of ps (masked) containing a.
func longestMatch(ps []netip.Prefix, a netip.Addr) (netip.Prefix, bool) {
	a = a.Unmap().WithZone("")
	var best netip.Prefix
	for _, p := range ps {
		m := p.Masked()
		if m.Contains(a) && (!best.IsValid() || m.Bits() > best.Bits()) {
			best = m
		}
	}
	return best, best.IsValid()
}
