package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// Owner returns the slot of the member holding a (a tunnel address or an
// address inside a child prefix), or -1.
func (c *Compiled) Owner(a netip.Addr) int {
	a = a.Unmap()
	for i := range c.members {
		m := &c.members[i]
		if m.ID == "" {
			continue
		}
		if m.IPv4 == a || m.IPv6 == a {
			return i
		}
		for _, p := range m.Prefixes {
			if p.Contains(a) {
				return i
			}
		}
	}
	return -1
}

// Member returns member slot i as given to Compile.
func (c *Compiled) Member(i int) Member { return c.members[i] }

// CheckResult is the answer to "may src open a flow to dst?".
type CheckResult struct {
	Allowed bool
	Rule    int    // 1-based rule that allows it (0 if none)
	Line    int    // its line in the document
	From    int    // slot of the member holding src, or -1
	To      int    // slot of the member holding dst, or -1
	Reason  string // one sentence
	// Missing is a rule that would allow the flow, when it is denied
	// between two members.
	Missing *Rule
}

// Check answers whether a new flow from src to dst (proto, destination port)
// passes: the member holding dst must list the one holding src among its
// peers and its filter must allow the flow. It evaluates the same filter the
// service sends that member (api.Filter.Allows), so it cannot disagree with
// what members enforce.
func (c *Compiled) Check(src, dst netip.Addr, proto Proto, port uint16) CheckResult {
	res := CheckResult{From: c.Owner(src), To: c.Owner(dst)}
	switch {
	case res.From < 0:
		res.Reason = fmt.Sprintf("no member holds %s (a tunnel address or an address in a child prefix)", src)
		return res
	case res.To < 0:
		res.Reason = fmt.Sprintf("no member holds %s (a tunnel address or an address in a child prefix)", dst)
		return res
	}
	from, to := c.members[res.From], c.members[res.To]
	f := c.Filter(res.To)
	if k, ok := f.Allows(src, dst, proto.String(), port); ok && (res.From == res.To || c.Peers(res.To).Has(res.From)) {
		res.Allowed = true
		res.Rule = f.Rules[k].Rule
		res.Line = c.rules[res.Rule-1].line
		res.Reason = fmt.Sprintf("rule %d (line %d) allows %s from %s (%s) to %s (%s)", res.Rule, res.Line,
			flowName(proto, port), src, from.Hostname, dst, to.Hostname)
		return res
	}
	res.Reason = fmt.Sprintf("no rule allows %s from %s (%s) to %s (%s)", flowName(proto, port), src, from.Hostname, dst, to.Hostname)
	if near := c.nearMisses(f, src, dst); near != "" {
		res.Reason += "; " + near
	}
	res.Missing = missingRule(from, to, src, dst, proto, port)
	return res
}

// nearMisses describes the rules that match the addresses but not the
// protocol or port.
func (c *Compiled) nearMisses(f *api.Filter, src, dst netip.Addr) string {
	var s []string
	for _, r := range f.Rules {
		if prefixesContain(r.Src, src) && prefixesContain(r.Dst, dst) {
			what := r.Proto
			if len(r.Ports) > 0 {
				ps := make([]string, len(r.Ports))
				for i, p := range r.Ports {
					ps[i] = p.String()
				}
				what += " port " + strings.Join(ps, ",")
			}
			s = append(s, fmt.Sprintf("rule %d (line %d) allows only %s", r.Rule, c.rules[r.Rule-1].line, what))
		}
	}
	return strings.Join(s, "; ")
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func flowName(p Proto, port uint16) string {
	if p == ProtoTCP || p == ProtoUDP {
		return fmt.Sprintf("%s port %d", p, port)
	}
	return p.String()
}

// missingRule returns a rule that allows the flow: members by hostname
// when the addresses are their tunnel addresses, else by address.
func missingRule(from, to Member, src, dst netip.Addr, proto Proto, port uint16) *Rule {
	pick := func(m Member, a netip.Addr) Selector {
		if (m.IPv4 == a || m.IPv6 == a) && !looksLikeAddr(m.Hostname) && checkName("", m.Hostname) == nil {
			return Selector{Kind: KindHost, Name: strings.ToLower(m.Hostname)}
		}
		return Selector{Kind: KindCIDR, Prefix: netip.PrefixFrom(a, a.BitLen())}
	}
	d := Dest{Selector: pick(to, dst)}
	if proto == ProtoTCP || proto == ProtoUDP {
		d.Ports = []api.PortRange{{First: port, Last: port}}
	}
	return &Rule{From: []Selector{pick(from, src)}, To: []Dest{d}, Proto: proto}
}

// MarshalJSON writes the rule in the document's form.
func (r Rule) MarshalJSON() ([]byte, error) {
	type doc struct {
		From  []string `json:"from"`
		To    []string `json:"to"`
		Proto string   `json:"proto"`
	}
	d := doc{Proto: r.Proto.String()}
	for _, s := range r.From {
		d.From = append(d.From, s.String())
	}
	for _, t := range r.To {
		d.To = append(d.To, t.String())
	}
	return json.Marshal(d)
}
