// Package pfilter is the userspace enforcer of a member's inbound filter
// (api.Filter): a stateful packet filter that sits between WireGuard and
// the netstack and decides, packet by packet, what reaches the member's
// tunnel addresses and the child prefixes it serves from userspace.
//
// State, the userspace counterpart of `ct state established,related`:
//
//   - TCP: a segment starts a new flow only when it carries SYN without
//     ACK; only those are checked against the rules. Every other segment
//     passes: the netstack itself is the connection table (a segment
//     without SYN cannot open a connection in gVisor, it is answered with a
//     reset), so replies to the member's own connections and later
//     segments of connections accepted earlier pass, even after the filter
//     changed (as with nftables, a change applies to new flows).
//   - UDP: a small flow table keyed by (remote, local) address and port
//     remembers the flows the member sent on (Outbound) and the inbound
//     flows the filter accepted, for udpTimeout after their last packet; a
//     datagram of a remembered flow passes, any other is a new flow.
//   - ICMP: echo replies and errors (destination unreachable, time
//     exceeded, parameter problem, packet too big) pass as replies or
//     related traffic; echo requests and every other type are new flows.
//   - Other IP protocols are new flows matched only by rules of proto any.
//
// The hot path (Inbound, Outbound) does not allocate except when the flow
// table grows.
package pfilter

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

const (
	// udpTimeout is how long a UDP flow is remembered after its last
	// packet (nf_conntrack_udp_timeout_stream).
	udpTimeout = 120 * time.Second
	// maxFlows bounds the UDP flow table; beyond it expired flows are swept
	// and, if it is still full, new flows are not remembered (their
	// replies are then checked as new flows).
	maxFlows = 1 << 16
)

// Filter is a stateful inbound packet filter. The zero value is not
// usable: make one with New. It is safe for concurrent use.
type Filter struct {
	rules atomic.Pointer[ruleSet] // nil: allow everything
	mu    sync.Mutex              // guards flows and inserts
	flows map[flowKey]time.Duration
	// inserts counts flow insertions since the last sweep.
	inserts int
	start   time.Time // monotonic clock origin for flow expiry
}

// ruleSet is one filter in force with its counters.
type ruleSet struct {
	f       *api.Filter
	hits    []atomic.Uint64 // new flows accepted per FilterRule
	dropped atomic.Uint64   // packets of new flows no rule accepted
}

type flowKey struct {
	remote, local netip.Addr
	rport, lport  uint16
}

// New returns a Filter that allows everything until Set.
func New() *Filter {
	return &Filter{flows: make(map[flowKey]time.Duration), start: time.Now()}
}

// Set replaces the filter in force; nil allows everything. Counters start
// from zero. Flows already accepted stay accepted (see the package doc).
func (f *Filter) Set(af *api.Filter) {
	if af == nil {
		f.rules.Store(nil)
		return
	}
	f.rules.Store(&ruleSet{f: af, hits: make([]atomic.Uint64, len(af.Rules))})
}

// Counters are a Filter's counts since the filter in force was set.
type Counters struct {
	// Active is false when no filter is in force (everything allowed).
	Active bool
	// Rules holds, per api.FilterRule of the filter in force (same
	// order), the number of new inbound flows it accepted.
	Rules []RuleCounter
	// Dropped counts inbound packets that started a new flow no rule
	// accepted (the default drop).
	Dropped uint64
}

// RuleCounter is the count of one api.FilterRule.
type RuleCounter struct {
	Rule     int // the policy rule it came from (api.FilterRule.Rule)
	Accepted uint64
}

// Counters returns the counts of the filter in force.
func (f *Filter) Counters() Counters {
	rs := f.rules.Load()
	if rs == nil {
		return Counters{}
	}
	c := Counters{Active: true, Dropped: rs.dropped.Load(), Rules: make([]RuleCounter, len(rs.hits))}
	for i := range rs.hits {
		c.Rules[i] = RuleCounter{Rule: rs.f.Rules[i].Rule, Accepted: rs.hits[i].Load()}
	}
	return c
}

// Inbound reports whether the IP packet p, arriving from the mesh, may be
// delivered.
func (f *Filter) Inbound(p []byte) bool {
	rs := f.rules.Load()
	h, ok := parse(p)
	if !ok {
		return rs == nil
	}
	proto := ""
	switch h.proto {
	case protoTCP:
		if !h.l4ok || h.tcpFlags&(tcpSYN|tcpACK) != tcpSYN {
			return true
		}
		proto = api.ProtoTCP
	case protoUDP:
		if !h.l4ok {
			return true // a later fragment: its first one was checked
		}
		k := flowKey{remote: h.src, local: h.dst, rport: h.sport, lport: h.dport}
		if f.refresh(k) {
			return true
		}
		if rs == nil || f.check(rs, h, api.ProtoUDP) {
			f.remember(k)
			return true
		}
		return false
	case protoICMP, protoICMPv6:
		if !h.l4ok || !icmpIsNew(h.proto, h.icmpType) {
			return true
		}
		proto = api.ProtoICMP
	}
	return rs == nil || f.check(rs, h, proto)
}

// check matches a new flow against rs and counts the outcome.
func (f *Filter) check(rs *ruleSet, h header, proto string) bool {
	i, ok := rs.f.Allows(h.src, h.dst, proto, h.dport)
	if !ok {
		rs.dropped.Add(1)
		return false
	}
	rs.hits[i].Add(1)
	return true
}

// Outbound records the flow of the IP packet p, which the member sends
// into the mesh, so that the replies pass Inbound.
func (f *Filter) Outbound(p []byte) {
	if len(p) < 20 || (p[0]>>4 == 4 && p[9] != protoUDP) || (p[0]>>4 == 6 && (len(p) < 40 || p[6] != protoUDP)) {
		return // fast path: only UDP keeps state here
	}
	h, ok := parse(p)
	if !ok || h.proto != protoUDP || !h.l4ok {
		return
	}
	k := flowKey{remote: h.dst, local: h.src, rport: h.dport, lport: h.sport}
	if !f.refresh(k) {
		f.remember(k)
	}
}

func (f *Filter) now() time.Duration { return time.Since(f.start) }

// refresh extends a remembered, unexpired flow; false when there is none.
func (f *Filter) refresh(k flowKey) bool {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	exp, ok := f.flows[k]
	if !ok || exp < now {
		return false
	}
	f.flows[k] = now + udpTimeout
	return true
}

// remember adds a flow, sweeping expired ones now and then.
func (f *Filter) remember(k flowKey) {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inserts++
	if len(f.flows) >= maxFlows || f.inserts >= 4096 {
		f.inserts = 0
		for k, exp := range f.flows {
			if exp < now {
				delete(f.flows, k)
			}
		}
		if len(f.flows) >= maxFlows {
			return
		}
	}
	f.flows[k] = now + udpTimeout
}

// flowCount returns the number of remembered flows (tests).
func (f *Filter) flowCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}

// icmpIsNew reports whether an ICMP message of typ starts a new exchange
// (anything but echo replies and errors).
func icmpIsNew(proto uint8, typ uint8) bool {
	if proto == protoICMP {
		switch typ {
		case 0, 3, 11, 12: // echo reply, unreachable, time exceeded, parameter problem
			return false
		}
		return true
	}
	switch typ {
	case 1, 2, 3, 4, 129: // unreachable, too big, time exceeded, parameter problem, echo reply
		return false
	}
	return true
}
