//go:build linux

package route

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DockerUser is the set of rules one mesh interface keeps at the top of
// Docker's DOCKER-USER chain: "iifname IFACE ip daddr PREFIX counter
// accept" per child prefix, each tagged with the comment
// "wiremesh:IFACE: mesh to PREFIX". Docker's FORWARD chain has policy
// DROP and only lets new connections into a bridge for published ports;
// these rules let the mesh reach the containers' own addresses. Replies
// (and connections the containers open towards the mesh) need no rule:
// Docker accepts everything leaving a (non-internal) bridge.
//
// The rules are built the way iptables-nft builds `iptables -I DOCKER-USER
// -i IFACE -d PREFIX -m comment --comment ... -j ACCEPT`, so `iptables -S
// DOCKER-USER`, iptables-save and Docker itself keep working with them in
// the table. DockerUser edits only rules carrying its tag and never the
// chain, the table or Docker's rules.
//
// While it is open, it checks every dockerRecheck that its rules are
// still there and puts them back when they are not: a Docker or firewall
// restart flushes DOCKER-USER (or deletes and recreates it) under a
// running router. A chain that is missing (Docker stopped) is waited for.
//
// It is safe for concurrent use.
type DockerUser struct {
	ifname string
	log    *slog.Logger
	ns     netns.NsHandle // owned duplicate, or None
	conn   *nftables.Conn
	stop   chan struct{} // closed by Close: ends the watch
	done   chan struct{} // closed when the watch has ended

	mu struct {
		sync.Mutex
		closed   bool
		prefixes []netip.Prefix
	}
}

// dockerRecheck is how often a DockerUser checks that its rules are there
// (one netlink dump of the chain); tests shorten it.
var dockerRecheck = 2 * time.Second

// DockerUserExists reports whether Docker's DOCKER-USER chain exists in
// nftables table ip filter (Docker with the iptables-nft backend, as on
// current distributions).
func DockerUserExists(opts ...Option) (bool, error) {
	const op = "route.DockerUserExists"
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	defer ns.Close()
	conn, err := nftConn(ns)
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	chains, err := dockerUserChains(conn)
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	return chains[nftables.TableFamilyIPv4] != nil, nil
}

// NewDockerUser inserts the rules for cfg at the top of DOCKER-USER, in
// one atomic batch that also removes rules of the same interface left over
// by a crashed run. It fails with ErrNoDockerUser when the chain does not
// exist, and with an error matching ErrInvalid on bad input; either way
// nothing is changed.
func NewDockerUser(cfg DockerUserConfig, opts ...Option) (*DockerUser, error) {
	const op = "route.NewDockerUser"
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
	d := &DockerUser{ifname: cfg.Interface, log: o.log.With("chain", DockerUserChain, "interface", cfg.Interface), ns: ns, conn: conn}
	removed, err := d.replace(cfg.Prefixes, true)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if removed > 0 {
		d.log.Info("replaced leftover DOCKER-USER rules", "rules", removed)
	}
	d.mu.prefixes = cfg.Prefixes
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go d.watch(dockerRecheck)
	return d, nil
}

// watch puts the rules back when they disappear, until Close.
func (d *DockerUser) watch(every time.Duration) {
	defer close(d.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		d.mu.Lock()
		if !d.mu.closed {
			d.recheckLocked()
		}
		d.mu.Unlock()
	}
}

// recheckLocked reinserts the rules when some are missing.
func (d *DockerUser) recheckLocked() {
	chains, err := dockerUserChains(d.conn)
	if err != nil {
		d.log.Debug("checking the DOCKER-USER rules", "err", err)
		return
	}
	want := 0
	for _, p := range d.mu.prefixes {
		fam := nftables.TableFamilyIPv4
		if p.Addr().Is6() {
			fam = nftables.TableFamilyIPv6
		}
		if chains[fam] != nil {
			want++
		}
	}
	if chains[nftables.TableFamilyIPv4] == nil || want == 0 {
		return // Docker is not running: its chain comes back with it
	}
	have := 0
	for _, c := range chains {
		rules, err := d.conn.GetRules(c.Table, c)
		if err != nil {
			d.log.Debug("checking the DOCKER-USER rules", "err", err)
			return
		}
		for _, r := range rules {
			if isDockerRule(ruleComment(r), d.ifname) {
				have++
			}
		}
	}
	if have == want {
		return
	}
	if _, err := d.replace(d.mu.prefixes, true); err != nil {
		d.log.Warn("DOCKER-USER rules were removed (a Docker or firewall restart?) and putting them back failed; retrying", "err", err)
		return
	}
	d.log.Info("DOCKER-USER rules were removed (a Docker or firewall restart?); put them back", "prefixes", d.mu.prefixes)
}

// Prefixes returns the prefixes the rules currently cover.
func (d *DockerUser) Prefixes() []netip.Prefix {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.mu.prefixes)
}

// Update replaces the rules with one per prefix of prefixes, atomically
// (the old rules go and the new ones come in one netlink batch). Invalid
// input returns an error matching ErrInvalid and changes nothing; after
// Close it returns net.ErrClosed. It also puts back rules someone removed
// (a flush of DOCKER-USER), so calling it again with the same prefixes
// repairs the chain.
func (d *DockerUser) Update(prefixes []netip.Prefix) error {
	const op = "route.DockerUser.Update"
	ps, err := normalizePrefixes(op, prefixes)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.closed {
		return net.ErrClosed
	}
	if _, err := d.replace(ps, true); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	d.mu.prefixes = ps
	return nil
}

// Close removes the rules. A chain that has disappeared meanwhile (Docker
// stopped and removed its chains) is not an error. A second Close returns
// net.ErrClosed.
func (d *DockerUser) Close() error {
	d.mu.Lock()
	if d.mu.closed {
		d.mu.Unlock()
		return net.ErrClosed
	}
	d.mu.closed = true
	d.mu.Unlock()
	close(d.stop)
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.ns.Close()
	if _, err := d.replace(nil, false); err != nil {
		return fmt.Errorf("route.DockerUser.Close: %w", err)
	}
	d.log.Debug("DOCKER-USER rules removed")
	return nil
}

// replace removes every rule tagged for d.ifname from DOCKER-USER (ip and
// ip6) and inserts one rule per prefix at the top, in one batch. With
// require, a missing ip DOCKER-USER chain is ErrNoDockerUser; without it
// (Close), there is simply nothing to remove. It returns how many rules it
// removed.
func (d *DockerUser) replace(ps []netip.Prefix, require bool) (int, error) {
	removed, err := replaceDockerRules(d.conn, d.ifname, ps, require, d.log)
	if err != nil {
		return 0, err
	}
	if len(ps) > 0 {
		d.log.Debug("DOCKER-USER rules installed", "prefixes", ps, "replaced", removed)
	}
	return removed, nil
}

// CleanupDockerUser removes the DOCKER-USER rules tagged for interface
// ifname that a crashed run left behind, in table ip filter and ip6 filter,
// and returns how many it removed. A missing chain is not an error.
func CleanupDockerUser(ifname string, opts ...Option) (int, error) {
	const op = "route.CleanupDockerUser"
	if err := checkIfname(ifname); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	defer ns.Close()
	conn, err := nftConn(ns)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	n, err := replaceDockerRules(conn, ifname, nil, false, o.log)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if n > 0 {
		o.log.Info("removed leftover DOCKER-USER rules", "interface", ifname, "rules", n)
	}
	return n, nil
}

// DockerBridgePrefixes returns those of prefixes (masked) that overlap a
// network on one of Docker's bridges (docker0, br-<id>; see
// IsDockerBridgeName): the child prefixes that need DOCKER-USER rules.
// Invalid input returns an error matching ErrInvalid.
func DockerBridgePrefixes(prefixes []netip.Prefix, opts ...Option) ([]netip.Prefix, error) {
	const op = "route.DockerBridgePrefixes"
	ps, err := normalizePrefixes(op, prefixes)
	if err != nil {
		return nil, err
	}
	o := newOptions(opts)
	h, err := o.handle()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("%s: list links: %w", op, err)
	}
	var bridges []netip.Prefix
	for _, l := range links {
		if l.Type() != "bridge" || !IsDockerBridgeName(l.Attrs().Name) {
			continue
		}
		addrs, err := h.AddrList(l, unix.AF_UNSPEC)
		if err != nil {
			return nil, fmt.Errorf("%s: addresses of %q: %w", op, l.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || a.IPNet == nil {
				continue
			}
			bits, _ := a.IPNet.Mask.Size()
			bridges = append(bridges, netip.PrefixFrom(ip.Unmap(), bits).Masked())
		}
	}
	var out []netip.Prefix
	for _, p := range ps {
		if overlapsAny(p, bridges) {
			out = append(out, p)
		}
	}
	return out, nil
}

// dockerUserChains returns the DOCKER-USER chains of table ip filter and
// ip6 filter that exist, by family.
func dockerUserChains(conn *nftables.Conn) (map[nftables.TableFamily]*nftables.Chain, error) {
	out := map[nftables.TableFamily]*nftables.Chain{}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		chains, err := conn.ListChainsOfTableFamily(fam)
		if err != nil {
			return nil, fmt.Errorf("list nftables chains: %w", err)
		}
		for _, c := range chains {
			if c.Table.Name == dockerUserTable && c.Name == DockerUserChain {
				out[fam] = c
			}
		}
	}
	return out, nil
}

// replaceDockerRules is NewDockerUser/Update/Close/CleanupDockerUser: in
// one batch it deletes the rules tagged for ifname and inserts one per
// prefix of ps at the top of the chain of its family.
func replaceDockerRules(conn *nftables.Conn, ifname string, ps []netip.Prefix, require bool, log *slog.Logger) (int, error) {
	chains, err := dockerUserChains(conn)
	if err != nil {
		return 0, err
	}
	if require && chains[nftables.TableFamilyIPv4] == nil {
		return 0, ErrNoDockerUser
	}
	removed := 0
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		c := chains[fam]
		if c == nil {
			continue
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return 0, fmt.Errorf("list rules of %s: %w", chainName(c), err)
		}
		for _, r := range rules {
			if isDockerRule(ruleComment(r), ifname) {
				if err := conn.DelRule(r); err != nil {
					return 0, fmt.Errorf("delete rule %d of %s: %w", r.Handle, chainName(c), err)
				}
				removed++
			}
		}
	}
	// Insert puts a rule first; insert in reverse so the rules read in
	// prefix order.
	for i := len(ps) - 1; i >= 0; i-- {
		p := ps[i]
		fam := nftables.TableFamilyIPv4
		if p.Addr().Is6() {
			fam = nftables.TableFamilyIPv6
		}
		c := chains[fam]
		if c == nil {
			log.Warn("no DOCKER-USER chain in table ip6 filter (Docker does not manage ip6tables); leaving IPv6 prefix alone", "prefix", p)
			continue
		}
		conn.InsertRule(&nftables.Rule{
			Table:    c.Table,
			Chain:    c,
			Exprs:    slices.Concat(ifname0(unix.NFT_META_IIFNAME, ifname), daddrMatch(p), []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictAccept}}),
			UserData: userdata.AppendString(nil, userdata.TypeComment, dockerRuleComment(ifname, p)),
		})
	}
	if err := conn.Flush(); err != nil {
		return 0, fmt.Errorf("update %s: %w", DockerUserChain, err)
	}
	return removed, nil
}

// ruleComment returns the comment of r: the rule's user data (nft's
// "comment", which DockerUser writes) or, failing that, an xt comment match
// (what iptables-nft writes for "-m comment --comment").
func ruleComment(r *nftables.Rule) string {
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		return c
	}
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if c, ok := m.Info.(*xt.Comment); ok {
				return string(*c)
			}
		}
	}
	return ""
}

func chainName(c *nftables.Chain) string {
	fam := "ip"
	if c.Table.Family == nftables.TableFamilyIPv6 {
		fam = "ip6"
	}
	return fmt.Sprintf("chain %s %s %s", fam, c.Table.Name, c.Name)
}

// ifname0 matches meta iifname/oifname exactly the way iptables-nft
// encodes "-i name": the name and its terminating NUL.
func ifname0(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: append([]byte(name), 0)},
	}
}

// daddrMatch matches the destination address against p in a table of p's
// family (ip or ip6), as iptables-nft encodes "-d p": payload, bitwise
// mask (omitted for a full-length prefix), compare.
func daddrMatch(p netip.Prefix) []expr.Any {
	offset := uint32(16) // ip daddr
	if p.Addr().Is6() {
		offset = 24 // ip6 daddr
	}
	n := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}}
	if p.Bits() < p.Addr().BitLen() {
		out = append(out, &expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: n,
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
			Xor:  make([]byte, n),
		})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}
