package mesh

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// Mode selects how a node carries packets.
type Mode int

const (
	// Userspace runs WireGuard and a gVisor TCP/IP stack inside the process:
	// no root, no TUN device, no inbound port needed. The node's addresses
	// are only reachable through Node.Dial, Node.Listen and friends.
	Userspace Mode = iota
	// Kernel drives a TUN device (see WithInterfaceName) with wireguard-go
	// and programs the host: tunnel addresses on the device, routes for the
	// zone's pools and every peer's child prefixes through it, and on a
	// router IP forwarding plus nftables rules for its child prefixes. Node.Dial,
	// Listen and Ping use the host network stack. Linux only, and it needs
	// root (CAP_NET_ADMIN); elsewhere Join returns ErrKernelModeUnsupported.
	Kernel
)

func (m Mode) String() string {
	switch m {
	case Userspace:
		return "userspace"
	case Kernel:
		return "kernel"
	default:
		return fmt.Sprintf("Mode(%d)", int(m))
	}
}

// DefaultMTU is the tunnel MTU used when WithMTU is not given.
const DefaultMTU = 1420

// PersistentKeepalive is the keepalive interval towards peers that have an
// endpoint, so that a node behind NAT keeps its path open.
const PersistentKeepalive = 25 * time.Second

// An Option configures Join.
type Option func(*config)

type config struct {
	token         string
	zone          string
	stateDir      string
	ephemeral     bool // WithEphemeral
	hostname      string
	listenPort    uint16
	logger        *slog.Logger
	mode          Mode
	insecureHTTP  bool
	fallbackURLs  []string // WithFallbackURLs
	endpoints     []netip.AddrPort
	mtu           int
	peerIdle      time.Duration // WithPeerIdleTimeout; 0 = never trim
	childPrefixes []netip.Prefix
	handlers      []prefixRoute // WithPrefixHandler
	ifname        string        // kernel mode: the TUN device
	masquerade    bool          // kernel mode router: masquerade into child prefixes
	backoffMin    time.Duration
	backoffMax    time.Duration
	statsInterval time.Duration // peer reports to the service, at least this often
	statsCheck    time.Duration // how often changed paths are looked for
	noStats       bool          // WithoutStatsReports
	errs          []error
}

func newConfig(opts []Option) (*config, error) {
	c := &config{
		mtu:        DefaultMTU,
		peerIdle:   DefaultPeerIdleTimeout,
		ifname:     DefaultInterfaceName,
		backoffMin: 500 * time.Millisecond,
		backoffMax: 30 * time.Second,

		statsInterval: api.StatsInterval,
		statsCheck:    defaultStatsCheck,
	}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if len(c.errs) > 0 {
		return nil, c.errs[0]
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// WithToken sets the join token ("wmj_..."), as printed by
// `wiremesh token create`. When the token carries the service's certificate
// fingerprint, the node pins it. Without a token, Join can only restart from
// a state directory holding a previous registration.
func WithToken(token string) Option {
	return func(c *config) { c.token = token }
}

// WithZone names the zone (mesh) to join. Empty (the default) means the zone
// the join token is bound to.
func WithZone(zone string) Option {
	return func(c *config) { c.zone = zone }
}

// WithStateDir keeps the node's private key (created once, mode 0600) and
// its last registration and peer list in dir, so that a restarted node keeps
// its identity and addresses and can start while the service is down.
// Without it (the default) the key lives in memory and dies with the node.
func WithStateDir(dir string) Option {
	return func(c *config) { c.stateDir = dir }
}

// WithHostname sets the name other members see. Default: os.Hostname().
func WithHostname(name string) Option {
	return func(c *config) { c.hostname = name }
}

// WithListenPort sets the WireGuard UDP port. 0 (the default) reuses the
// port saved in the state directory when there is one, else picks a free
// port.
func WithListenPort(port uint16) Option {
	return func(c *config) { c.listenPort = port }
}

// WithLogger sets the node's logger. nil (the default) is quiet.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithMode selects Userspace (the default) or Kernel.
func WithMode(m Mode) Option {
	return func(c *config) {
		if m != Userspace && m != Kernel {
			c.errs = append(c.errs, fmt.Errorf("WithMode(%d): unknown mode", int(m)))
			return
		}
		c.mode = m
	}
}

// WithInsecureHTTP allows a plain http:// service URL on a non-loopback
// host (behind a TLS-terminating proxy, or in a lab). Loopback http:// URLs
// are always accepted.
func WithInsecureHTTP() Option {
	return func(c *config) { c.insecureHTTP = true }
}

// WithFallbackURLs gives more URLs of the same service: its replicas on a
// shared database (wiremesh serve --store postgres://…). When the service
// URL cannot be reached, or answers that it is unavailable, the node moves
// on to the next URL, round robin, and resumes its watch there from the
// last revision it saw, missing no change. Same scheme as the service URL;
// the join token is given once (WithToken or the service URL).
func WithFallbackURLs(urls ...string) Option {
	return func(c *config) { c.fallbackURLs = append(c.fallbackURLs, urls...) }
}

// WithEndpoints advertises these addresses for WireGuard UDP instead of the
// auto-detected one (the local address used to reach the service, with the
// listen port). Use it behind port forwarding or with a public address.
func WithEndpoints(eps ...netip.AddrPort) Option {
	return func(c *config) {
		for _, ep := range eps {
			if !ep.IsValid() || ep.Port() == 0 || ep.Addr().IsUnspecified() {
				c.errs = append(c.errs, fmt.Errorf("WithEndpoints: invalid endpoint %q", ep.String()))
				return
			}
			c.endpoints = append(c.endpoints, netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()))
		}
	}
}

// WithMTU sets the tunnel MTU. Default DefaultMTU (1420).
//
// Give every member of a zone the same MTU. A userspace member keeps
// message buffers sized for its own MTU (at least 2 KiB): it does not hear
// packets from a peer whose MTU is larger than about 2000 bytes and
// larger than its own, when those packets exceed its buffers (TCP is not
// affected, its segments fit both ends' MSS; large UDP datagrams and
// pings are dropped, without an error on either side).
func WithMTU(mtu int) Option {
	return func(c *config) {
		if mtu < 1280 || mtu > 65535 {
			c.errs = append(c.errs, fmt.Errorf("WithMTU(%d): want 1280..65535", mtu))
			return
		}
		c.mtu = mtu
	}
}

// WithPeerIdleTimeout sets how long a peer may go without traffic (no IP
// packet to or from it through the tunnel) before it is trimmed from the
// node's WireGuard device, which then holds state only for the peers in
// use: an idle member of a large zone costs far less memory. The node
// keeps knowing, routing and probing (once a minute) a trimmed peer; the
// first packet to or from it configures it again, at the cost of one
// handshake (one round trip). A peer is trimmed only once the session it may still hold with
// this node has expired (about 3 minutes after the last handshake), so
// the actual time is at least that. Default DefaultPeerIdleTimeout;
// 0 never trims; values between 0 and 1s mean 1s. Works in both modes.
func WithPeerIdleTimeout(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errs = append(c.errs, fmt.Errorf("WithPeerIdleTimeout(%v): want >= 0", d))
			return
		}
		c.peerIdle = d
	}
}

// WithChildPrefix advertises a prefix behind this node (a container
// network, a lab subnet): it is sent in the registration, allocated to the
// node by the service (unique in the zone, kept across restarts) and
// reported by Node.Prefixes, and every other member routes it to this node.
//
// A userspace node forwards the TCP and UDP that peers send to addresses
// in its child prefixes to the host network with ordinary sockets (an
// unprivileged router: no root needed), and answers ICMP echo for them
// only when the host reaches them; WithPrefixHandler serves a prefix in
// the program instead. See ForwardDialTimeout for the details. The option
// may be repeated; Node.AdvertisePrefix and Node.ReleasePrefix change the
// prefixes at run time.
//
// A prefix that overlaps another member's makes Join fail with an error
// matching ErrPrefixConflict; one the service refuses (loopback,
// link-local, ...) with ErrInvalidPrefix.
func WithChildPrefix(p netip.Prefix) Option {
	return func(c *config) {
		if !p.IsValid() {
			c.errs = append(c.errs, fmt.Errorf("WithChildPrefix: invalid prefix %q", p.String()))
			return
		}
		if p != p.Masked() {
			c.errs = append(c.errs, fmt.Errorf("WithChildPrefix(%q): host bits set, want %q: %w", p.String(), p.Masked().String(), ErrInvalidPrefix))
			return
		}
		c.childPrefixes = append(c.childPrefixes, p)
	}
}

// DefaultInterfaceName is the TUN device of a kernel-mode node when
// WithInterfaceName is not given.
const DefaultInterfaceName = "wg0"

// WithInterfaceName names the TUN device of a kernel-mode node (default
// DefaultInterfaceName, "wg0"): 1 to 15 characters without '/', ':' or
// white space. Userspace nodes have no device and ignore it.
func WithInterfaceName(name string) Option {
	return func(c *config) {
		if name == "" || len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\x00") {
			c.errs = append(c.errs, fmt.Errorf("WithInterfaceName(%q): want 1-15 characters without '/', ':' or spaces", name))
			return
		}
		c.ifname = name
	}
}

// WithMasquerade makes a kernel-mode router rewrite the source of traffic
// it forwards from the mesh into its child prefixes to its own address on
// the outgoing interface, for networks whose hosts do not route the mesh
// back through the router (a LAN whose gateway is elsewhere). Userspace
// routers always forward with the host's own sockets and ignore it.
func WithMasquerade() Option {
	return func(c *config) { c.masquerade = true }
}

// WithoutStatsReports keeps the node from reporting its peers (path, last
// handshake, bytes per peer) to the service, which otherwise it does every
// 30 s and when a path changes, for the admin API and the dashboard. The
// node works the same; the service shows no report for it.
func WithoutStatsReports() Option {
	return func(c *config) { c.noStats = true }
}

// WithReconnectBackoff bounds the exponential backoff (with jitter) between
// attempts to reach the service after it went away. Defaults: 500ms, 30s.
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *config) {
		if min <= 0 || max < min {
			c.errs = append(c.errs, fmt.Errorf("WithReconnectBackoff(%v, %v): want 0 < min <= max", min, max))
			return
		}
		c.backoffMin, c.backoffMax = min, max
	}
}
