package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/control/api"
)

// ErrPrefixNotHeld is returned (wrapped) by Node.ReleasePrefix for a prefix
// the node does not hold.
var ErrPrefixNotHeld = errors.New("prefix not held by this node")

// A PrefixHandler serves, inside the program, the traffic that peers send
// to addresses in a child prefix of a userspace node, instead of the
// node forwarding it to the host network (see WithPrefixHandler).
//
// Each method runs in a goroutine of its own. conn is closed when the
// method returns and when the node closes; Node.Close waits for the
// methods to return, so they must return once conn fails.
type PrefixHandler interface {
	// ServeTCP serves an accepted TCP connection. orig is the address the
	// peer connected to; conn.RemoteAddr is the peer's.
	ServeTCP(conn net.Conn, orig netip.AddrPort)
	// ServeUDP serves a UDP flow: the datagrams one peer address sends to
	// orig. Each Read returns one datagram (the first one is already
	// waiting); each Write sends one back to the peer, from orig. conn is
	// closed after UDPFlowIdleTimeout without a datagram either way.
	ServeUDP(conn net.Conn, orig netip.AddrPort)
}

// PrefixPinger is implemented by a PrefixHandler that answers ICMP echo
// requests. Without it, echo requests to the handler's prefix get no
// reply.
type PrefixPinger interface {
	// ServePing reports whether an echo request to dst gets a reply. ctx
	// ends when the node closes; answer promptly.
	ServePing(ctx context.Context, dst netip.Addr) bool
}

// PrefixHandlerFuncs is a PrefixHandler (and PrefixPinger) made of
// functions. A nil TCP refuses connections with a reset, a nil UDP drops
// datagrams, a nil Ping leaves echo requests unanswered.
type PrefixHandlerFuncs struct {
	TCP  func(conn net.Conn, orig netip.AddrPort)
	UDP  func(conn net.Conn, orig netip.AddrPort)
	Ping func(ctx context.Context, dst netip.Addr) bool
}

var (
	_ PrefixHandler = PrefixHandlerFuncs{}
	_ PrefixPinger  = PrefixHandlerFuncs{}
)

// ServeTCP calls h.TCP.
func (h PrefixHandlerFuncs) ServeTCP(conn net.Conn, orig netip.AddrPort) {
	if h.TCP != nil {
		h.TCP(conn, orig)
	}
}

// ServeUDP calls h.UDP.
func (h PrefixHandlerFuncs) ServeUDP(conn net.Conn, orig netip.AddrPort) {
	if h.UDP != nil {
		h.UDP(conn, orig)
	}
}

// ServePing calls h.Ping; false when nil.
func (h PrefixHandlerFuncs) ServePing(ctx context.Context, dst netip.Addr) bool {
	return h.Ping != nil && h.Ping(ctx, dst)
}

// refusesTCP and refusesUDP report a PrefixHandlerFuncs without the
// function, which refuses rather than accepting and closing.
func refusesTCP(h PrefixHandler) bool {
	switch f := h.(type) {
	case PrefixHandlerFuncs:
		return f.TCP == nil
	case *PrefixHandlerFuncs:
		return f.TCP == nil
	}
	return false
}

func refusesUDP(h PrefixHandler) bool {
	switch f := h.(type) {
	case PrefixHandlerFuncs:
		return f.UDP == nil
	case *PrefixHandlerFuncs:
		return f.UDP == nil
	}
	return false
}

// prefixRoute is a PrefixHandler and the prefix it serves.
type prefixRoute struct {
	prefix  netip.Prefix
	handler PrefixHandler
}

// WithPrefixHandler makes a userspace node serve the traffic for addresses
// in p with h instead of forwarding it to the host network. p must be one
// of the node's child prefixes or inside one (WithChildPrefix,
// Node.AdvertisePrefix): traffic only reaches the node for those, and only
// while it holds them. The longest matching handler prefix wins. The option
// may be repeated with different prefixes.
func WithPrefixHandler(p netip.Prefix, h PrefixHandler) Option {
	return func(c *config) {
		switch {
		case !p.IsValid():
			c.errs = append(c.errs, fmt.Errorf("WithPrefixHandler: invalid prefix %q: %w", p.String(), ErrInvalidPrefix))
		case p != p.Masked():
			c.errs = append(c.errs, fmt.Errorf("WithPrefixHandler(%q): host bits set, want %q: %w", p.String(), p.Masked().String(), ErrInvalidPrefix))
		case h == nil:
			c.errs = append(c.errs, fmt.Errorf("WithPrefixHandler(%q): nil handler", p.String()))
		case slices.ContainsFunc(c.handlers, func(r prefixRoute) bool { return r.prefix == p }):
			c.errs = append(c.errs, fmt.Errorf("WithPrefixHandler(%q): a handler for this prefix is set already", p.String()))
		default:
			c.handlers = append(c.handlers, prefixRoute{prefix: p, handler: h})
		}
	}
}

// checkPrefixArg rejects what the service would reject in any zone
// without asking it: an invalid prefix or one with host bits set.
func checkPrefixArg(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix %q: %w", p.String(), ErrInvalidPrefix)
	}
	if p != p.Masked() {
		return fmt.Errorf("prefix %q has host bits set (want %q): %w", p.String(), p.Masked().String(), ErrInvalidPrefix)
	}
	return nil
}

// AdvertisePrefix adds p to the node's child prefixes: the service
// allocates it to the node (it stays the node's across restarts until
// ReleasePrefix), peers route it to the node within seconds, and a
// userspace node starts serving it (see WithChildPrefix). Advertising a
// prefix the node holds already does nothing.
//
// The service decides: a prefix that overlaps another member's prefix or
// the zone's tunnel pools fails with an error matching ErrPrefixConflict
// (naming the prefix and its owner; errors.As gives the *api.Error with
// Prefix and Owner), a prefix that breaks the prefix rules (loopback,
// link-local, multicast, a default route...) with ErrInvalidPrefix. On any
// error, the service unreachable included, nothing changed.
func (n *Node) AdvertisePrefix(ctx context.Context, p netip.Prefix) error {
	op := fmt.Sprintf("mesh: advertise prefix %s", p)
	if err := checkPrefixArg(p); err != nil {
		return fmt.Errorf("mesh: advertise prefix: %w", err)
	}
	if n.isClosed() {
		return fmt.Errorf("%s: %w", op, net.ErrClosed)
	}
	n.prefixMu.Lock()
	defer n.prefixMu.Unlock()
	d, err := n.client.UpdateSelf(ctx, api.UpdateSelfRequest{AddChildPrefixes: []string{p.String()}})
	if err != nil {
		return wrapService(op, err)
	}
	got := canonPrefixes(d.ChildPrefixes)
	if !slices.Contains(got, p) {
		return fmt.Errorf("%s: the service accepted the request but does not list the prefix (it lists %v)", op, got)
	}
	n.mu.Lock()
	n.setPrefixesLocked(got)
	n.wantPrefixes = canonPrefixes(append(n.wantPrefixes, p))
	n.mu.Unlock()
	if err := n.saveState(); err != nil {
		n.log.Warn("mesh: saving state", "err", err)
	}
	n.log.Info("mesh: prefix advertised", "prefix", p)
	return nil
}

// ReleasePrefix gives up the child prefix p: the service frees it in the
// zone (another member may take it), peers stop routing it to the node
// within seconds, and the node stops serving it at once, closing the
// connections and flows into it. A prefix the node does not hold fails
// with ErrPrefixNotHeld. On any error, the service unreachable included,
// nothing changed.
func (n *Node) ReleasePrefix(ctx context.Context, p netip.Prefix) error {
	op := fmt.Sprintf("mesh: release prefix %s", p)
	if err := checkPrefixArg(p); err != nil {
		return fmt.Errorf("mesh: release prefix: %w", err)
	}
	if n.isClosed() {
		return fmt.Errorf("%s: %w", op, net.ErrClosed)
	}
	n.prefixMu.Lock()
	defer n.prefixMu.Unlock()
	if err := n.client.ReleasePrefix(ctx, p); err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Code != api.CodeNotFound {
			return wrapService(op, err)
		}
		// Not held at the service: released already (a retried request
		// that took effect, an admin), or never ours.
		if held := n.Prefixes(); !slices.Contains(held, p) {
			return fmt.Errorf("%s: %w (it holds %v)", op, ErrPrefixNotHeld, held)
		}
	}
	n.mu.Lock()
	n.setPrefixesLocked(slices.DeleteFunc(slices.Clone(n.self.prefixes), func(q netip.Prefix) bool { return q == p }))
	n.wantPrefixes = slices.DeleteFunc(n.wantPrefixes, func(q netip.Prefix) bool { return q == p })
	n.mu.Unlock()
	if err := n.saveState(); err != nil {
		n.log.Warn("mesh: saving state", "err", err)
	}
	n.log.Info("mesh: prefix released", "prefix", p)
	return nil
}

// setPrefixesLocked records the node's child prefixes and hands them to
// the data plane (once it runs; it starts with n.self.prefixes). n.mu must
// be held.
func (n *Node) setPrefixesLocked(ps []netip.Prefix) {
	n.self.prefixes = ps
	if n.plane != nil {
		n.plane.setPrefixes(ps)
	}
}

// wantedPrefixes returns the prefixes the node asks for when it registers:
// those of WithChildPrefix and AdvertisePrefix, minus those released.
func (n *Node) wantedPrefixes() []netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.wantPrefixes)
}
