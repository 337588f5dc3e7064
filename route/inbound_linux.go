//go:build linux

package route

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// inputChain is the chain (hook input, filter) that holds the inbound
// filter for the host's own addresses.
const inputChain = "input"

// Comments that identify the inbound filter's rules for counters.
const (
	inboundRulePrefix = "wiremesh: filter rule "
	inboundDrop       = "wiremesh: nothing else from the mesh"
)

// SetInbound puts an inbound filter in force (rules nil: none, the
// firewall accepts every flow from the mesh to the child prefixes and
// leaves the host's input alone; rules empty but non-nil: no new flow
// from the mesh). With a filter, both the input chain (the host's own
// addresses) and the forward chain (the child prefixes) accept packets
// from the mesh interface that belong to known connections (ct state
// established,related), then new flows the rules accept, and drop the
// rest. The chains are replaced in one transaction; counters start from
// zero.
func (f *Firewall) SetInbound(rules []InboundRule) error {
	const op = "route.Firewall.SetInbound"
	for i, r := range rules {
		if err := checkInboundRule(r); err != nil {
			return fmt.Errorf("%s: %w: rule %d: %s", op, ErrInvalid, i+1, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return fmt.Errorf("%s: %w", op, net.ErrClosed)
	}
	old := f.mu.inbound
	if rules != nil {
		rules = slices.Clone(rules)
	}
	f.mu.inbound = rules
	f.conn.FlushChain(f.fwd)
	created := false
	if f.input != nil {
		f.conn.FlushChain(f.input)
	} else if rules != nil {
		created = true
		accept := nftables.ChainPolicyAccept
		f.input = f.conn.AddChain(&nftables.Chain{
			Name: inputChain, Table: f.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		})
	}
	if f.nat != nil {
		f.conn.FlushChain(f.nat)
	}
	f.addRules(f.mu.prefixes)
	if err := f.conn.Flush(); err != nil {
		f.mu.inbound = old
		if created {
			f.input = nil
		}
		return fmt.Errorf("%s: table inet %s: %w", op, f.cfg.TableName, err)
	}
	f.log.Debug("nftables inbound filter set", "rules", len(rules), "enabled", rules != nil)
	return nil
}

func checkInboundRule(r InboundRule) error {
	switch r.Proto {
	case "tcp", "udp":
	case "icmp", "any":
		if len(r.Ports) > 0 {
			return fmt.Errorf("ports with protocol %q", r.Proto)
		}
	default:
		return fmt.Errorf("protocol %q", r.Proto)
	}
	for _, p := range slices.Concat(r.Src, r.Dst) {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return fmt.Errorf("prefix %q", p)
		}
	}
	for _, pr := range r.Ports {
		if pr[0] > pr[1] {
			return fmt.Errorf("port range %d-%d", pr[0], pr[1])
		}
	}
	return nil
}

// addInboundRules queues, on chain c, the inbound filter's rules for
// packets from the mesh interface: established first, the rules, drop.
func (f *Firewall) addInboundRules(c *nftables.Chain, rules []InboundRule) {
	in := ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, f.cfg.Interface)
	f.addRule(c, "wiremesh: replies from the mesh", in, ctEstablished(), acceptExprs())
	for i, r := range rules {
		for _, v6 := range []bool{false, true} {
			src, dst := familyPrefixes(r.Src, v6), familyPrefixes(r.Dst, v6)
			if len(src) == 0 || len(dst) == 0 {
				continue
			}
			ex := slices.Concat(in, f.inboundMatch(src, dst, v6, r), acceptExprs())
			f.addRule(c, inboundRulePrefix+strconv.Itoa(i+1), ex)
		}
	}
	f.addRule(c, inboundDrop, in, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}})
}

func acceptExprs() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
}

func (f *Firewall) addRule(c *nftables.Chain, comment string, exprs ...[]expr.Any) {
	f.conn.AddRule(&nftables.Rule{
		Table: f.table, Chain: c, Exprs: slices.Concat(exprs...),
		UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
	})
}

func familyPrefixes(ps []netip.Prefix, v6 bool) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Addr().Is6() == v6 {
			out = append(out, p.Masked())
		}
	}
	return out
}

// inboundMatch matches family, source and destination sets, protocol and
// ports of r.
func (f *Firewall) inboundMatch(src, dst []netip.Prefix, v6 bool, r InboundRule) []expr.Any {
	fam, saddr, daddr, alen, typ := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16), uint32(4), nftables.TypeIPAddr
	icmp := byte(unix.IPPROTO_ICMP)
	if v6 {
		fam, saddr, daddr, alen, typ = unix.NFPROTO_IPV6, 8, 24, 16, nftables.TypeIP6Addr
		icmp = unix.IPPROTO_ICMPV6
	}
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: alen},
		f.lookup(typ, prefixElements(src)),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: alen},
		f.lookup(typ, prefixElements(dst)),
	}
	l4 := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		}
	}
	switch r.Proto {
	case "tcp", "udp":
		p := byte(unix.IPPROTO_TCP)
		if r.Proto == "udp" {
			p = unix.IPPROTO_UDP
		}
		out = append(out, l4(p)...)
		if len(r.Ports) > 0 {
			out = append(out,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				f.lookup(nftables.TypeInetService, portElements(r.Ports)))
		}
	case "icmp":
		out = append(out, l4(icmp)...)
	}
	return out
}

// lookup queues an anonymous constant interval set of elems and returns
// the expression that matches register 1 against it. The set lives as
// long as the rule (flushing the chain frees it).
func (f *Firewall) lookup(typ nftables.SetDatatype, elems []nftables.SetElement) *expr.Lookup {
	s := &nftables.Set{Table: f.table, Anonymous: true, Constant: true, Interval: true, KeyType: typ}
	if err := f.conn.AddSet(s, elems); err != nil {
		// Only for a non-constant anonymous set, which this is not.
		panic(err)
	}
	return &expr.Lookup{SourceRegister: 1, SetID: s.ID, SetName: s.Name}
}

// prefixElements turns sorted, non-overlapping prefixes into interval set
// elements: the first address, and the address after the last as the end
// (none when the prefix reaches the top of the address space).
func prefixElements(ps []netip.Prefix) []nftables.SetElement {
	slices.SortFunc(ps, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	var out []nftables.SetElement
	for _, p := range ps {
		first := p.Masked().Addr()
		out = append(out, nftables.SetElement{Key: first.AsSlice()})
		if end := lastAddr(p).Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func portElements(rs [][2]uint16) []nftables.SetElement {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b [2]uint16) int { return int(a[0]) - int(b[0]) })
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint16(nil, r[0])})
		if r[1] < 65535 {
			out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint16(nil, r[1]+1), IntervalEnd: true})
		}
	}
	return out
}

// InboundCounters returns the inbound filter's counts (zero without a
// filter): per rule the packets of new flows accepted, and the drops.
func (f *Firewall) InboundCounters() (InboundCounters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return InboundCounters{}, fmt.Errorf("route.Firewall.InboundCounters: %w", net.ErrClosed)
	}
	if f.mu.inbound == nil {
		return InboundCounters{}, nil
	}
	out := InboundCounters{Accepted: make([]uint64, len(f.mu.inbound))}
	for _, c := range []*nftables.Chain{f.input, f.fwd} {
		if c == nil {
			continue
		}
		rules, err := f.conn.GetRules(f.table, c)
		if err != nil {
			return InboundCounters{}, fmt.Errorf("route.Firewall.InboundCounters: chain %s: %w", c.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			n := ruleCount(r)
			if comment == inboundDrop {
				out.Dropped += n
			} else if s, ok := strings.CutPrefix(comment, inboundRulePrefix); ok {
				if i, err := strconv.Atoi(s); err == nil && i >= 1 && i <= len(out.Accepted) {
					out.Accepted[i-1] += n
				}
			}
		}
	}
	return out, nil
}

func ruleCount(r *nftables.Rule) uint64 {
	for _, e := range r.Exprs {
		if c, ok := e.(*expr.Counter); ok {
			return c.Packets
		}
	}
	return 0
}
