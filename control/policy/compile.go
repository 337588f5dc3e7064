package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// Member is a zone member as the compiler sees it.
type Member struct {
	ID         string // "" marks an unused slot: it is in no set and gets no view
	Hostname   string
	Tags       []string // from its join token
	IPv4, IPv6 netip.Addr
	Prefixes   []netip.Prefix // child prefixes
}

// owned returns the member's tunnel addresses and child prefixes.
func (m *Member) owned() []netip.Prefix {
	out := make([]netip.Prefix, 0, 2+len(m.Prefixes))
	out = append(out, m.tunnel()...)
	return append(out, m.Prefixes...)
}

// tunnel returns the member's tunnel addresses as prefixes.
func (m *Member) tunnel() []netip.Prefix {
	out := make([]netip.Prefix, 0, 2)
	for _, a := range []netip.Addr{m.IPv4, m.IPv6} {
		if a.IsValid() {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// Compiled is a policy compiled against one set of members. It answers, per
// member slot, which peers the member may exchange traffic with ([Peers])
// and the inbound filter it enforces ([Filter]). It is read-only and safe
// for concurrent use.
//
// Compile costs O(rules × members) set operations; Peers O(rules × members/64)
// and Filter O(rules × selectors × the member's prefixes).
type Compiled struct {
	members []Member
	rules   []compiledRule
}

// compiledRule is one rule resolved against the members.
type compiledRule struct {
	index int // 1-based position in the policy
	line  int
	proto Proto
	src   Set            // members covered by a From selector
	dst   Set            // members reached by a To selector
	srcP  []netip.Prefix // the From addresses, aggregated (shared by every filter)
	to    []destGroup    // To selectors grouped by ports
}

// destGroup is the To selectors of a rule that share one port list.
type destGroup struct {
	ports []api.PortRange
	any   bool
	hosts Set            // members whose tunnel addresses are named (tag, hostname)
	cidrs []netip.Prefix // named prefixes
}

// Compile resolves p against members (indexed by slot; an empty ID is an
// unused slot). prev, if not nil, is an earlier compilation: source lists
// that did not change are shared with it, so that comparing old and new
// filters is cheap (see FiltersEqual).
func Compile(p *Policy, members []Member, prev *Compiled) *Compiled {
	members = slices.Clone(members) // the caller may reuse its slice
	n := len(members)
	c := &Compiled{members: members, rules: make([]compiledRule, 0, len(p.Rules))}
	all := NewSet(n)
	hosts := map[string]Set{}
	tags := map[string]Set{}
	for tag := range p.Tags {
		tags[tag] = NewSet(n)
	}
	for i := range members {
		m := &members[i]
		if m.ID == "" {
			continue
		}
		all.Add(i)
		h := strings.ToLower(m.Hostname)
		if hosts[h] == nil {
			hosts[h] = NewSet(n)
		}
		hosts[h].Add(i)
		for _, t := range m.Tags {
			if s := tags[t]; s != nil {
				s.Add(i)
			}
		}
	}
	for tag, hs := range p.Tags {
		for _, h := range hs {
			if s := hosts[h]; s != nil {
				tags[tag].Or(s)
			}
		}
	}
	r := resolver{members: members, all: all, hosts: hosts, tags: tags, n: n}
	for k, rule := range p.Rules {
		cr := compiledRule{index: k + 1, line: rule.Line, proto: rule.Proto, src: NewSet(n), dst: NewSet(n)}
		for _, s := range rule.From {
			cr.src.Or(r.covers(s))
			cr.srcP = append(cr.srcP, r.prefixes(s)...)
		}
		cr.srcP = Aggregate(cr.srcP)
		if prev != nil && k < len(prev.rules) && slices.Equal(prev.rules[k].srcP, cr.srcP) {
			cr.srcP = prev.rules[k].srcP
		}
		for _, d := range rule.To {
			cr.dst.Or(r.covers(d.Selector))
			g := cr.group(d.Ports, n)
			switch d.Kind {
			case KindAny:
				g.any = true
			case KindCIDR:
				g.cidrs = append(g.cidrs, d.Prefix)
			default:
				g.hosts.Or(r.covers(d.Selector))
			}
		}
		c.rules = append(c.rules, cr)
	}
	return c
}

// group returns the destination group of ports, adding it if new.
func (cr *compiledRule) group(ports []api.PortRange, n int) *destGroup {
	for i := range cr.to {
		if slices.Equal(cr.to[i].ports, ports) {
			return &cr.to[i]
		}
	}
	cr.to = append(cr.to, destGroup{ports: ports, hosts: NewSet(n)})
	return &cr.to[len(cr.to)-1]
}

// resolver maps selectors to members and addresses.
type resolver struct {
	members []Member
	all     Set
	hosts   map[string]Set
	tags    map[string]Set
	n       int
}

// covers returns the members a selector covers: for a CIDR, those whose
// tunnel addresses or child prefixes overlap it.
func (r *resolver) covers(s Selector) Set {
	switch s.Kind {
	case KindAny:
		return r.all
	case KindTag:
		return r.setOrEmpty(r.tags[s.Name])
	case KindHost:
		return r.setOrEmpty(r.hosts[s.Name])
	}
	out := NewSet(r.n)
	for i := range r.members {
		m := &r.members[i]
		if m.ID != "" && overlapsAny(s.Prefix, m.owned()) {
			out.Add(i)
		}
	}
	return out
}

func (r *resolver) setOrEmpty(s Set) Set {
	if s == nil {
		return NewSet(r.n)
	}
	return s
}

// prefixes returns the source addresses a selector names.
func (r *resolver) prefixes(s Selector) []netip.Prefix {
	switch s.Kind {
	case KindAny:
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	case KindCIDR:
		return []netip.Prefix{s.Prefix}
	}
	var out []netip.Prefix
	for i := range r.covers(s).All() {
		out = append(out, r.members[i].tunnel()...)
	}
	return out
}

func overlapsAny(p netip.Prefix, ps []netip.Prefix) bool {
	for _, q := range ps {
		if p.Overlaps(q) {
			return true
		}
	}
	return false
}

// Len returns the number of member slots.
func (c *Compiled) Len() int { return len(c.members) }

// Peers returns the members that member i may exchange traffic with: those
// it may reach and those that may reach it, not i itself. The set is
// symmetric: j is in Peers(i) exactly when i is in Peers(j).
func (c *Compiled) Peers(i int) Set {
	v := NewSet(len(c.members))
	for k := range c.rules {
		r := &c.rules[k]
		if r.src.Has(i) {
			v.Or(r.dst)
		}
		if r.dst.Has(i) {
			v.Or(r.src)
		}
	}
	v.Remove(i)
	return v
}

// Filter returns member i's inbound filter: one rule per policy rule, port
// list and protocol that reaches one of its addresses or child prefixes,
// in policy order. The Src slices are shared between filters: never modify
// them.
func (c *Compiled) Filter(i int) *api.Filter {
	f := &api.Filter{Rules: []api.FilterRule{}}
	if i < 0 || i >= len(c.members) || c.members[i].ID == "" {
		return f
	}
	m := &c.members[i]
	for k := range c.rules {
		r := &c.rules[k]
		if !r.dst.Has(i) || len(r.srcP) == 0 {
			continue // not for i, or from nobody (a tag without members)
		}
		for g := range r.to {
			dst := r.to[g].intersect(i, m)
			if len(dst) == 0 {
				continue
			}
			for _, proto := range protos(r.proto, r.to[g].ports) {
				f.Rules = append(f.Rules, api.FilterRule{Rule: r.index, Src: r.srcP, Dst: dst, Proto: proto, Ports: r.to[g].ports})
			}
		}
	}
	return f
}

// protos returns the filter protocols of a rule: any with ports is tcp and udp.
func protos(p Proto, ports []api.PortRange) []string {
	if p == ProtoAny && len(ports) > 0 {
		return []string{api.ProtoTCP, api.ProtoUDP}
	}
	return []string{p.String()}
}

// intersect returns the part of member i's addresses and prefixes the
// group names.
func (g *destGroup) intersect(i int, m *Member) []netip.Prefix {
	if g.any {
		return Aggregate(m.owned())
	}
	var out []netip.Prefix
	if g.hosts.Has(i) {
		out = append(out, m.tunnel()...)
	}
	owned := m.owned()
	for _, c := range g.cidrs {
		for _, o := range owned {
			if c.Overlaps(o) {
				if c.Bits() > o.Bits() {
					out = append(out, c)
				} else {
					out = append(out, o)
				}
			}
		}
	}
	return Aggregate(out)
}

// FiltersEqual reports whether two filters are the same, comparing shared
// Src slices by identity first.
func FiltersEqual(a, b *api.Filter) bool {
	if a == nil || b == nil {
		return a == b
	}
	if len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		x, y := &a.Rules[i], &b.Rules[i]
		if x.Rule != y.Rule || x.Proto != y.Proto || !slices.Equal(x.Ports, y.Ports) || !slices.Equal(x.Dst, y.Dst) {
			return false
		}
		if len(x.Src) != len(y.Src) || (len(x.Src) > 0 && &x.Src[0] != &y.Src[0] && !slices.Equal(x.Src, y.Src)) {
			return false
		}
	}
	return true
}
