//go:build linux

package route

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Chain names inside the firewall's table.
const (
	forwardChain = "forward"     // hook forward, filter
	natChain     = "postrouting" // hook postrouting, srcnat; only with Masquerade
)

// Firewall is the nftables table of one router (family inet, named by
// FirewallConfig.TableName). Its forward chain accepts traffic forwarded
// from the mesh interface to a child prefix, from a child prefix to the
// mesh interface, and replies (ct state established,related) in both
// directions; it drops any other traffic forwarded from or to the mesh
// interface, so enabling forwarding does not open the host's other networks
// to peers. With Masquerade, a postrouting nat chain masquerades traffic
// forwarded from the mesh interface to a child prefix.
//
// nftables evaluates every base chain on a hook: an accept here cannot
// override a drop in another table (for example Docker's iptables FORWARD
// chain with policy DROP); such a host must allow the traffic there too.
//
// It is safe for concurrent use.
type Firewall struct {
	cfg   FirewallConfig // normalized; ChildPrefixes guarded by mu
	log   *slog.Logger
	ns    netns.NsHandle // owned duplicate, or None
	conn  *nftables.Conn
	table *nftables.Table
	fwd   *nftables.Chain
	input *nftables.Chain // the inbound filter for the host's addresses (SetInbound)
	nat   *nftables.Chain // nil without Masquerade

	mu struct {
		sync.Mutex
		closed   bool
		prefixes []netip.Prefix
		inbound  []InboundRule // nil: no inbound filter (SetInbound)
	}
}

// NewFirewall installs the table described by cfg in one atomic batch,
// replacing a table of the same name left over by a crashed run.
func NewFirewall(cfg FirewallConfig, opts ...Option) (*Firewall, error) {
	const op = "route.NewFirewall"
	cfg, err := cfg.normalize(op)
	if err != nil {
		return nil, err
	}
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	conn, err := nftConn(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	f := &Firewall{
		cfg:   cfg,
		log:   o.log.With("table", cfg.TableName),
		ns:    ns,
		conn:  conn,
		table: &nftables.Table{Name: cfg.TableName, Family: nftables.TableFamilyINet},
	}
	if _, err := conn.ListTableOfFamily(cfg.TableName, nftables.TableFamilyINet); err == nil {
		f.log.Info("replacing leftover nftables table")
	}
	// Create-then-delete removes a leftover without failing when there is none.
	conn.AddTable(f.table)
	conn.DelTable(f.table)
	conn.AddTable(f.table)
	accept := nftables.ChainPolicyAccept
	f.fwd = conn.AddChain(&nftables.Chain{
		Name: forwardChain, Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	if cfg.Masquerade {
		f.nat = conn.AddChain(&nftables.Chain{
			Name: natChain, Table: f.table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
		})
	}
	f.addRules(cfg.ChildPrefixes)
	if err := conn.Flush(); err != nil {
		ns.Close()
		return nil, fmt.Errorf("%s: table inet %s: %w", op, cfg.TableName, err)
	}
	f.mu.prefixes = cfg.ChildPrefixes
	f.log.Debug("nftables table installed", "child_prefixes", cfg.ChildPrefixes, "masquerade", cfg.Masquerade)
	return f, nil
}

// Prefixes returns the child prefixes the rules currently cover.
func (f *Firewall) Prefixes() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.mu.prefixes)
}

// Update replaces the child prefixes, atomically: the chains are flushed
// and refilled in one netlink batch, so no packet sees a partial rule set.
// Invalid input returns an error matching ErrInvalid and changes nothing.
func (f *Firewall) Update(prefixes []netip.Prefix) error {
	const op = "route.Firewall.Update"
	ps, err := normalizePrefixes(op, prefixes)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return net.ErrClosed
	}
	f.conn.FlushChain(f.fwd)
	if f.input != nil {
		f.conn.FlushChain(f.input)
	}
	if f.nat != nil {
		f.conn.FlushChain(f.nat)
	}
	f.addRules(ps)
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("%s: table inet %s: %w", op, f.cfg.TableName, err)
	}
	f.mu.prefixes = ps
	f.log.Debug("nftables rules updated", "child_prefixes", ps)
	return nil
}

// Close deletes the table. A second Close returns net.ErrClosed.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.closed {
		return net.ErrClosed
	}
	f.mu.closed = true
	defer f.ns.Close()
	if err := deleteTable(f.conn, f.cfg.TableName); err != nil {
		return fmt.Errorf("route.Firewall.Close: %w", err)
	}
	return nil
}

// deleteTable removes table inet name; a missing table is not an error.
func deleteTable(conn *nftables.Conn, name string) error {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", name, err)
	}
	return nil
}

// addRules queues the rules for ps (see Firewall) and the inbound filter
// (see SetInbound) on f.conn.
func (f *Firewall) addRules(ps []netip.Prefix) {
	ifc := f.cfg.Interface
	add := func(c *nftables.Chain, comment string, exprs ...[]expr.Any) {
		f.conn.AddRule(&nftables.Rule{
			Table: f.table, Chain: c, Exprs: slices.Concat(exprs...),
			UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
		})
	}
	accept := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	if f.mu.inbound != nil {
		// From the mesh, only new flows the filter accepts, to the child
		// prefixes (forward) and to the host (input).
		add(f.fwd, "wiremesh: replies into the mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), ctEstablished(), accept)
		for _, p := range ps {
			add(f.fwd, "wiremesh: child prefix "+p.String()+" to mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), addrMatch(p, true), accept)
		}
		add(f.fwd, "wiremesh: nothing else into the mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), drop)
		f.addInboundRules(f.fwd, f.mu.inbound)
		if f.input != nil {
			f.addInboundRules(f.input, f.mu.inbound)
		}
	} else {
		add(f.fwd, "wiremesh: replies from the mesh", ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, ifc), ctEstablished(), accept)
		add(f.fwd, "wiremesh: replies into the mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), ctEstablished(), accept)
		for _, p := range ps {
			add(f.fwd, "wiremesh: mesh to child prefix "+p.String(), ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, ifc), addrMatch(p, false), accept)
			add(f.fwd, "wiremesh: child prefix "+p.String()+" to mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), addrMatch(p, true), accept)
		}
		add(f.fwd, inboundDrop, ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, ifc), drop)
		add(f.fwd, "wiremesh: nothing else into the mesh", ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_EQ, ifc), drop)
	}
	if f.nat == nil {
		return
	}
	masq := []expr.Any{&expr.Counter{}, &expr.Masq{}}
	for _, p := range ps {
		add(f.nat, "wiremesh: masquerade mesh to child prefix "+p.String(),
			ifname(unix.NFT_META_IIFNAME, unix.NFT_CMP_EQ, ifc), ifname(unix.NFT_META_OIFNAME, unix.NFT_CMP_NEQ, ifc),
			addrMatch(p, false), masq)
	}
}

// ifname matches meta iifname/oifname against name (nft pads to IFNAMSIZ).
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// ctEstablished matches ct state established,related.
func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// addrMatch matches the IP source (src) or destination address against p,
// after checking the packet's family (the table is inet).
func addrMatch(p netip.Prefix, src bool) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(16) // ip daddr
	if src {
		offset = 12
	}
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 24 // ip6 daddr
		if src {
			offset = 8
		}
	}
	n := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
	}
	if p.Bits() < p.Addr().BitLen() {
		out = append(out, &expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
			Xor:  make([]byte, n),
		})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

// tableExists reports whether table inet name exists.
func tableExists(conn *nftables.Conn, name string) (bool, error) {
	ts, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == name }), nil
}
