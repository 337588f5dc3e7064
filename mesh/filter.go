package mesh

import (
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/control/api"
)

// applyFilter makes f the node's inbound filter (from a snapshot or a
// filter event; nil: accept everything) and puts it in force on the data
// plane. The state is saved by the caller.
func (n *Node) applyFilter(f *api.Filter) {
	n.mu.Lock()
	old := n.filter
	n.filter = f
	n.mu.Unlock()
	n.plane.setFilter(f)
	switch {
	case f == nil && old != nil:
		n.log.Info("mesh: the zone has no policy any more; accepting every inbound flow")
	case f != nil:
		n.log.Info("mesh: inbound filter in force", "rules", len(f.Rules))
	}
}

func (n *Node) currentFilter() *api.Filter {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.filter
}

// FilterStatus is the node's inbound filter (from the zone's policy) and
// what it did since it was put in force.
type FilterStatus struct {
	// Active is false when the zone has no policy: every inbound flow is
	// accepted and the other fields are empty.
	Active bool
	// Rules are the filter's rules, in order, with their counters.
	Rules []FilterRuleStatus
	// Dropped counts inbound packets that started a new flow no rule
	// accepted (the default drop). Replies and packets of accepted flows
	// are never dropped.
	Dropped uint64
}

// FilterRuleStatus is one rule of the inbound filter (see api.FilterRule)
// and the number of new inbound flows it accepted. Counts are packets
// opening a flow (a TCP SYN, a UDP datagram of an unknown flow, an echo
// request): a retransmitted SYN counts again.
type FilterRuleStatus struct {
	// Rule is the 1-based index of the policy rule it came from.
	Rule     int
	Src, Dst []netip.Prefix
	Proto    string
	Ports    []api.PortRange
	Accepted uint64
}

// filterStatus combines the filter in force with the plane's counters.
func filterStatus(f *api.Filter, c filterCounters) FilterStatus {
	if f == nil {
		return FilterStatus{}
	}
	st := FilterStatus{Active: true}
	same := c.filter == f && len(c.rules) == len(f.Rules)
	if same {
		st.Dropped = c.dropped
	}
	for i, r := range f.Rules {
		rs := FilterRuleStatus{Rule: r.Rule, Src: slices.Clone(r.Src), Dst: slices.Clone(r.Dst), Proto: r.Proto, Ports: slices.Clone(r.Ports)}
		if same {
			rs.Accepted = c.rules[i]
		}
		st.Rules = append(st.Rules, rs)
	}
	return st
}
