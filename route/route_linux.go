//go:build linux

package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Linux is the kernel route table of one interface, programmed through
// netlink in the network namespace it was created in. Routes it adds carry
// RouteProtocol; addresses it adds are remembered in memory. It is safe for
// concurrent use; Apply calls are serialized.
type Linux struct {
	ifname string
	log    *slog.Logger
	h      *netlink.Handle

	mu struct {
		sync.Mutex
		closed bool
		ours   []netip.Prefix          // addresses this table added and has not removed
		addrs  []netip.Prefix          // desired addresses of the last Apply (for Lookup)
		routes []netip.Prefix          // routes installed by the last Apply (for Lookup)
		skips  map[netip.Prefix]string // skips of the last Apply, to log changes only
	}
}

var _ Table = (*Linux)(nil)

// NewLinux returns the table of interface ifname, which must exist, in the
// caller's network namespace or the one given with WithNetNS. It changes
// nothing until Apply.
func NewLinux(ifname string, opts ...Option) (*Linux, error) {
	const op = "route.NewLinux"
	if err := checkIfname(ifname); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	o := newOptions(opts)
	h, err := o.handle()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if _, err := h.LinkByName(ifname); err != nil {
		h.Close()
		return nil, fmt.Errorf("%s: interface %q: %w", op, ifname, err)
	}
	return &Linux{ifname: ifname, log: o.log.With("interface", ifname), h: h}, nil
}

// Apply reconciles the interface to d (see Table.Apply). It also sets the
// interface up if it is down, since the kernel refuses routes through a
// down interface. On partial failure it returns the joined errors; what
// succeeded stays applied, and the next Apply retries the rest.
func (l *Linux) Apply(ctx context.Context, d Desired) (Result, error) {
	const op = "route.Linux.Apply"
	n, err := normalize(op, d)
	if err != nil {
		return Result{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		return Result{}, net.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("%s: %w", op, err)
	}
	link, err := l.h.LinkByName(l.ifname)
	if err != nil {
		return Result{}, fmt.Errorf("%s: interface %q: %w", op, l.ifname, err)
	}
	idx := link.Attrs().Index
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.h.LinkSetUp(link); err != nil {
			return Result{}, fmt.Errorf("%s: set %q up: %w", op, l.ifname, err)
		}
	}
	cur, installed, err := l.current(link)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", op, err)
	}
	p := makePlan(n, cur)

	var errs []error
	failed := map[netip.Prefix]bool{} // desired routes not installed
	ours := intersect(l.mu.ours, cur.present)
	step := func(err error, format string, args ...any) bool {
		if err != nil {
			errs = append(errs, fmt.Errorf(format+": %w", append(args, err)...))
		}
		return err == nil
	}
	for _, r := range p.delRoutes {
		if ctx.Err() != nil {
			break
		}
		rt := installed[r]
		if step(ignoreGone(l.h.RouteDel(&rt)), "delete route %s", r) {
			l.log.Debug("route removed", "prefix", r)
		}
	}
	for _, a := range p.delAddrs {
		if ctx.Err() != nil {
			break
		}
		if step(ignoreGone(l.h.AddrDel(link, &netlink.Addr{IPNet: ipNet(a)})), "delete address %s", a) {
			ours = slices.DeleteFunc(ours, func(x netip.Prefix) bool { return x == a })
			l.log.Debug("address removed", "addr", a)
		}
	}
	for _, a := range p.addAddrs {
		if ctx.Err() != nil {
			break
		}
		if step(l.h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(a)}), "add address %s", a) {
			ours = append(ours, a)
			l.log.Debug("address added", "addr", a)
		}
	}
	for _, r := range p.addRoutes {
		if ctx.Err() != nil {
			failed[r] = true
			continue
		}
		err := l.h.RouteAdd(ourRoute(idx, r))
		switch {
		case errors.Is(err, unix.EEXIST):
			failed[r] = true
			p.skipped = append(p.skipped, Skip{Prefix: r, Reason: "conflicts with an existing route not added by wiremesh"})
		case step(err, "add route %s", r):
			l.log.Debug("route added", "prefix", r)
		default:
			failed[r] = true
		}
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	slices.SortFunc(p.skipped, func(a, b Skip) int { return comparePrefix(a.Prefix, b.Prefix) })
	l.logSkips(p.skipped)
	l.mu.ours = sortedUnique(ours)
	l.mu.addrs = n.addrs
	l.mu.routes = slices.DeleteFunc(p.routes, func(r netip.Prefix) bool { return failed[r] })
	res := Result{Skipped: p.skipped}
	if len(errs) > 0 {
		return res, fmt.Errorf("%s %q: %w", op, l.ifname, errors.Join(errs...))
	}
	return res, nil
}

// logSkips logs new or changed skips at Warn and cleared ones at Info, so a
// periodic Apply does not repeat the same warning.
func (l *Linux) logSkips(skipped []Skip) {
	now := make(map[netip.Prefix]string, len(skipped))
	for _, s := range skipped {
		now[s.Prefix] = s.Reason
		if l.mu.skips[s.Prefix] != s.Reason {
			l.log.Warn("route not installed", "prefix", s.Prefix, "reason", s.Reason)
		}
	}
	for p := range l.mu.skips {
		if _, ok := now[p]; !ok {
			l.log.Info("route skip cleared", "prefix", p)
		}
	}
	l.mu.skips = now
}

// current reads the interface's addresses, our routes on it and the networks
// directly connected on other interfaces.
func (l *Linux) current(link netlink.Link) (current, map[netip.Prefix]netlink.Route, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return l.h.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return current{}, nil, fmt.Errorf("list addresses of %q: %w", l.ifname, err)
	}
	cur := current{ours: l.mu.ours}
	for _, a := range addrs {
		if p, ok := fromIPNet(a.IPNet, false); ok {
			cur.present = append(cur.present, p)
		}
	}
	routes, err := ourRoutes(l.h, link.Attrs().Index)
	if err != nil {
		return current{}, nil, err
	}
	for p := range routes {
		cur.routes = append(cur.routes, p)
	}
	cur.connected, err = connected(l.h, link.Attrs().Index)
	if err != nil {
		return current{}, nil, err
	}
	return cur, routes, nil
}

// Lookup returns the longest installed route or address prefix covering a.
func (l *Linux) Lookup(a netip.Addr) (netip.Prefix, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		return netip.Prefix{}, false
	}
	return longestMatch(slices.Concat(l.mu.addrs, l.mu.routes), a)
}

// Close removes the routes carrying RouteProtocol on the interface and the
// addresses this table added. If the interface is gone, so are they.
func (l *Linux) Close() error {
	const op = "route.Linux.Close"
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.mu.closed {
		return net.ErrClosed
	}
	l.mu.closed = true
	defer l.h.Close()
	link, err := l.h.LinkByName(l.ifname)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: interface %q: %w", op, l.ifname, err)
	}
	errs := []error{deleteOurRoutes(l.h, link)}
	for _, a := range l.mu.ours {
		if err := ignoreGone(l.h.AddrDel(link, &netlink.Addr{IPNet: ipNet(a)})); err != nil {
			errs = append(errs, fmt.Errorf("delete address %s: %w", a, err))
		}
	}
	l.mu.ours, l.mu.addrs, l.mu.routes = nil, nil, nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s %q: %w", op, l.ifname, err)
	}
	return nil
}

// ourRoute is the route this package installs for p through link idx.
func ourRoute(idx int, p netip.Prefix) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: idx,
		Dst:       ipNet(p),
		Protocol:  netlink.RouteProtocol(RouteProtocol),
		Table:     unix.RT_TABLE_MAIN,
	}
	if p.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

// ourRoutes lists the main-table routes carrying RouteProtocol through link idx.
func ourRoutes(h *netlink.Handle, idx int) (map[netip.Prefix]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: idx, Protocol: netlink.RouteProtocol(RouteProtocol), Table: unix.RT_TABLE_MAIN}
	mask := netlink.RT_FILTER_OIF | netlink.RT_FILTER_PROTOCOL | netlink.RT_FILTER_TABLE
	rs, err := retryDump(func() ([]netlink.Route, error) { return h.RouteListFiltered(netlink.FAMILY_ALL, filter, mask) })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out := make(map[netip.Prefix]netlink.Route, len(rs))
	for _, r := range rs {
		if p, ok := fromIPNet(r.Dst, true); ok {
			out[p] = r
		}
	}
	return out, nil
}

// deleteOurRoutes removes every route carrying RouteProtocol through link.
func deleteOurRoutes(h *netlink.Handle, link netlink.Link) error {
	rs, err := ourRoutes(h, link.Attrs().Index)
	if err != nil {
		return err
	}
	var errs []error
	for p, r := range rs {
		if err := ignoreGone(h.RouteDel(&r)); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// connected lists the networks directly connected on interfaces other than
// idx: main-table unicast routes without a gateway, and local ranges wider
// than one address (an address range on lo). Default and IPv6 link-local
// routes are ignored.
func connected(h *netlink.Handle, idx int) ([]Connected, error) {
	rs, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	names := map[int]string{}
	var out []Connected
	for _, r := range rs {
		if r.LinkIndex == 0 || r.LinkIndex == idx {
			continue
		}
		p, ok := fromIPNet(r.Dst, true)
		if !ok || p.Bits() == 0 || (p.Addr().Is6() && p.Addr().IsLinkLocalUnicast()) {
			continue
		}
		onLink := r.Table == unix.RT_TABLE_MAIN && r.Type == unix.RTN_UNICAST &&
			r.Gw == nil && r.Via == nil && len(r.MultiPath) == 0
		localRange := r.Table == unix.RT_TABLE_LOCAL && r.Type == unix.RTN_LOCAL && p.Bits() < p.Addr().BitLen()
		if !onLink && !localRange {
			continue
		}
		name, ok := names[r.LinkIndex]
		if !ok {
			if link, err := h.LinkByIndex(r.LinkIndex); err == nil {
				name = link.Attrs().Name
			} else {
				name = fmt.Sprintf("ifindex %d", r.LinkIndex)
			}
			names[r.LinkIndex] = name
		}
		out = append(out, Connected{Prefix: p, Interface: name})
	}
	return out, nil
}

// retryDump repeats a netlink dump interrupted by a concurrent change.
func retryDump[T any](f func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return v, err
	}
}

// ignoreGone treats "already removed" as success.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// fromIPNet converts n; masked drops host bits. It reports false for nil or
// malformed input.
func fromIPNet(n *net.IPNet, masked bool) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	ip := n.IP
	if bits == 32 {
		ip = ip.To4()
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	p := netip.PrefixFrom(a, ones)
	if masked {
		p = p.Masked()
	}
	return p, true
}
