// Package route programs the host for a mesh interface: it reconciles the
// interface's addresses and routes to a desired state (netlink on Linux),
// enables IP forwarding on routers, confines and optionally masquerades
// forwarded child-prefix traffic (nftables), and offers an in-memory table
// with the same semantics for userspace mode.
package route

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netns"
)

// RouteProtocol is the route protocol number (rtm_protocol) that marks every
// route this package adds, so that reconciliation and crash cleanup find
// exactly ours and never touch anyone else's (`ip route show proto 87`).
const RouteProtocol = 0x57

// DefaultTableName is the nftables table name prefix used when
// FirewallConfig.TableName is empty; the interface name is appended
// ("wiremesh-wg0") so that several agents on one host keep separate tables.
const DefaultTableName = "wiremesh"

// Sentinel errors; errors returned by this package match them with errors.Is.
var (
	// ErrUnsupported: the platform has no implementation (not Linux).
	ErrUnsupported = errors.New("route: not supported on this platform")
	// ErrInvalid: bad input (a Desired or FirewallConfig field); nothing was changed.
	ErrInvalid = errors.New("route: invalid input")
)

// Desired is the complete desired state for one interface.
type Desired struct {
	// Addrs are the addresses on the interface, e.g. 100.64.0.1/16 and
	// fdxx::1/64. The prefix length gives the on-link route of the zone,
	// which the kernel creates with the address.
	Addrs []netip.Prefix
	// Routes are extra routes through the interface: peers' child prefixes,
	// zone pools not covered by Addrs. Host bits are masked off. A route equal
	// to the masked prefix of an address is dropped (the kernel has it).
	Routes []netip.Prefix
}

// Result reports what Apply did not do on purpose.
type Result struct {
	// Skipped lists the desired routes that were not installed, sorted by
	// prefix, each with the reason (also logged at Warn).
	Skipped []Skip
}

// Skip is a desired route that was not installed and why.
type Skip struct {
	Prefix netip.Prefix
	// Reason is a short lower-case sentence, e.g.
	// "overlaps 172.24.0.0/16 directly connected on docker0".
	Reason string
}

func (s Skip) String() string { return s.Prefix.String() + ": " + s.Reason }

// Connected is a network directly reachable from this host on another
// interface (a route without gateway, or a local range such as a /24 on lo).
// A desired route overlapping one is skipped, never routed into the tunnel.
type Connected struct {
	Prefix    netip.Prefix
	Interface string
}

// Table is the route table of one mesh interface.
type Table interface {
	// Apply reconciles the interface to d: it adds what is missing and
	// removes what it added earlier and is no longer wanted; it never
	// touches addresses or routes it did not add. A route overlapping a
	// network directly connected on another interface is skipped and
	// reported in Result. Invalid input returns an error matching
	// ErrInvalid and changes nothing. After Close it returns net.ErrClosed.
	Apply(ctx context.Context, d Desired) (Result, error)
	// Lookup reports the most specific installed route or address prefix
	// that covers a (longest match), and whether there is one.
	Lookup(a netip.Addr) (netip.Prefix, bool)
	// Close removes everything the table added. A second Close returns
	// net.ErrClosed.
	Close() error
}

// Option configures NewLinux, NewFirewall, EnableForwarding and
// CleanupLeftovers.
type Option func(*options)

type options struct {
	log *slog.Logger
	ns  netns.NsHandle // netns.None(): the caller's network namespace
}

// WithNetNS makes the call operate in network namespace ns instead of the
// caller's. The handle is only borrowed: the caller keeps it open until the
// constructor returns and closes it afterwards; nothing keeps a reference.
func WithNetNS(ns netns.NsHandle) Option { return func(o *options) { o.ns = ns } }

// WithLogger sets the logger; nil (the default) is quiet.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

func newOptions(opts []Option) *options {
	o := &options{ns: netns.None()}
	for _, opt := range opts {
		opt(o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	return o
}

// normalized is a validated Desired: addresses deduplicated and sorted,
// routes masked, deduplicated, sorted and without the addresses' own
// on-link prefixes.
type normalized struct {
	addrs  []netip.Prefix
	routes []netip.Prefix
}

// normalize validates d; the error matches ErrInvalid and quotes the input.
func normalize(op string, d Desired) (normalized, error) {
	var n normalized
	onLink := map[netip.Prefix]bool{}
	for _, a := range d.Addrs {
		if err := checkPrefix(a); err != nil {
			return normalized{}, fmt.Errorf("%s: %w: address %q: %s", op, ErrInvalid, a, err)
		}
		if !a.Addr().IsGlobalUnicast() {
			return normalized{}, fmt.Errorf("%s: %w: address %q: not a unicast address", op, ErrInvalid, a)
		}
		n.addrs = append(n.addrs, a)
		onLink[a.Masked()] = true
	}
	for _, r := range d.Routes {
		if err := checkPrefix(r); err != nil {
			return normalized{}, fmt.Errorf("%s: %w: route %q: %s", op, ErrInvalid, r, err)
		}
		if m := r.Masked(); !onLink[m] {
			n.routes = append(n.routes, m)
		}
	}
	n.addrs = sortedUnique(n.addrs)
	n.routes = sortedUnique(n.routes)
	return n, nil
}

func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("not a valid prefix")
	case p.Addr().Is4In6():
		return errors.New("IPv4-mapped IPv6 is not allowed")
	case p.Addr().Zone() != "":
		return errors.New("zoned address is not allowed")
	}
	return nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func sortedUnique(ps []netip.Prefix) []netip.Prefix {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, comparePrefix)
	return slices.Compact(ps)
}

// checkIfname validates an interface name as the kernel would.
func checkIfname(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\x00") {
		return fmt.Errorf("%w: interface name %q: want 1-15 characters without '/', ':' or spaces", ErrInvalid, name)
	}
	return nil
}
