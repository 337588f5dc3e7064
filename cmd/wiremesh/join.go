package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
	"github.com/wiremesh/wiremesh/mesh"
)

const joinUsage = `usage: wiremesh [join] [flags] URL [URL...]

Joins the mesh coordinated by the service at URL as a member (a spoke) and
stays a member until interrupted (SIGINT/SIGTERM). Kernel mode is the
default: a TUN device (--interface, default wg0) with the tunnel addresses
and routes to the zone and every member's child prefixes; it needs root.
--userspace runs without root or TUN device: programs reach the mesh
through --socks5-server or --http-proxy (or the mesh library). On exit the
interface and everything the agent added are removed; the registration
stays, and the same command started again (or after a reboot) is the same
member with the same addresses and prefixes: the key and registration are
kept in a state directory (as root /var/lib/wiremesh/INTERFACE, else
$XDG_STATE_HOME/wiremesh/INSTANCE). 'wiremesh down' leaves for good;
--ephemeral joins without a state directory, and the device is deleted
when the agent stops (or stays offline for the service's ephemeral
timeout).
More URLs are replicas of the same service (on a shared database): the
member moves on to the next when one is unreachable.

flags:
`

// agentFlags are the flags of `wiremesh join` and `wiremesh router`.
type agentFlags struct {
	token, stateDir, zone, hostname, ifname, socket string
	listenPort                                      uint
	peerIdle                                        time.Duration
	userspace, insecureHTTP, masquerade, verbose    bool
	ephemeral, ifaceSet, noStats                    bool
	childPrefixes                                   stringList
	docker                                          dockerFlag
	services                                        serviceFlags
	fallbackURLs                                    []string // more URLs: replicas of the service
}

func (a *agentFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.token, "token", "", "join token (default $WIREMESH_TOKEN)")
	fs.StringVar(&a.stateDir, "state-dir", "", "directory keeping the node's key, registration and last peer list (default: /var/lib/wiremesh/INSTANCE as root, else $XDG_STATE_HOME/wiremesh/INSTANCE; INSTANCE is the interface, or userspace[-INTERFACE])")
	fs.BoolVar(&a.ephemeral, "ephemeral", false, "no state directory (unless --state-dir): a new identity each start, deleted at the service when the agent stops or stays offline")
	fs.StringVar(&a.zone, "zone", "", "zone to join (default: the join token's zone)")
	fs.StringVar(&a.hostname, "hostname", "", "name other members see (default: the host name)")
	fs.UintVar(&a.listenPort, "listen-port", 0, "WireGuard UDP port (default: saved or random)")
	fs.BoolVar(&a.userspace, "userspace", false, "run in userspace mode (no root, no TUN device)")
	fs.StringVar(&a.ifname, "interface", mesh.DefaultInterfaceName, "kernel mode: name of the TUN device")
	fs.BoolVar(&a.masquerade, "masquerade", false, "kernel-mode router: masquerade traffic forwarded from the mesh into the child prefixes")
	fs.StringVar(&a.socket, "socket", "", "status socket for 'wiremesh status' (default "+defaultSocketPath("IFACE")+")")
	fs.DurationVar(&a.peerIdle, "peer-idle-timeout", mesh.DefaultPeerIdleTimeout, "trim a peer from the WireGuard device after this long without traffic (it comes back, one handshake away, with its next packet; at least about 3 minutes after its last handshake); 0: never trim")
	fs.BoolVar(&a.insecureHTTP, "insecure-http", false, "allow a plain http:// service URL on a non-loopback host")
	fs.BoolVar(&a.verbose, "v", false, "verbose logs on stderr")
	fs.BoolVar(&a.noStats, "no-stats", false, "do not report peers' paths, handshakes and bytes to the service (shown in the admin API and the dashboard)")
	fs.Var(&a.docker, "docker", "kernel-mode router: let mesh traffic to the child prefixes through Docker's DOCKER-USER chain (default: when a child prefix is a Docker bridge's subnet; --docker=false: never)")
	fs.Var(&a.childPrefixes, "child-prefix", "a network behind this machine that members route here (CIDR, repeatable)")
	a.services.register(fs)
}

// runJoin implements `wiremesh join` (and `wiremesh URL`): a spoke.
func runJoin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAgent(ctx, "join", joinUsage, args, stdout, stderr)
}

// runAgent runs a member until ctx ends or a signal arrives.
func runAgent(ctx context.Context, name, usage string, args []string, stdout, stderr io.Writer) error {
	a, fs, url, err := parseAgentArgs(name, usage, args, stderr)
	if err != nil {
		return err
	}
	for _, u := range append([]string{url}, a.fallbackURLs...) {
		if err := checkServiceURL(name+": service URL", u); err != nil {
			return err
		}
	}
	opts, err := a.options(name, stderr)
	if err != nil {
		return err
	}
	if name == "router" && len(a.childPrefixes) == 0 {
		fs.Usage()
		return usageErr("router: at least one --child-prefix=CIDR is needed (a spoke is 'wiremesh URL')")
	}
	if !a.userspace && os.Geteuid() != 0 {
		return fmt.Errorf("%s: kernel mode (TUN device %q, host routes) needs root: run with sudo, or pass --userspace", name, a.ifname)
	}
	sock := a.socket
	if sock == "" {
		sock = defaultSocketPath(agentInstance(a.userspace, a.ifname, a.ifaceSet))
	}
	if statusSocketLive(sock) {
		return fmt.Errorf("%s: another agent is running: its status socket %s answers (stop it, or pass another --interface or --socket)", name, sock)
	}

	svc, err := a.services.listen(name)
	if err != nil {
		return err
	}
	defer svc.close()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Fprintf(stdout, "registering with %s ...\n", url)
	n, err := mesh.Join(ctx, url, opts...)
	if err != nil {
		return joinError(name, url, err)
	}
	defer n.Close()
	if name == "router" && !a.userspace {
		du, err := dockerRules(a.docker, a.ifname, n.Prefixes(), stdout, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if du != nil {
			defer du.Close()
		}
	}

	st := printJoined(stdout, n)
	srv, err := serveStatus(sock, n)
	if err != nil {
		fmt.Fprintf(stderr, "wiremesh: no status socket (wiremesh status will not work): %v\n", err)
	} else {
		defer srv.Close()
	}
	if err := svc.serve(n, stdout, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	left := leaveOrWait(ctx, n, srv, stop, stdout, st)
	if srv != nil {
		srv.Close()
	}
	svc.close()
	if err := n.Close(); err != nil && !left {
		return fmt.Errorf("%s: close: %w", name, err)
	}
	return nil
}

// parseAgentArgs parses the flags and the service URLs of `wiremesh join`
// or `wiremesh router`.
func parseAgentArgs(name, usage string, args []string, stderr io.Writer) (*agentFlags, *flag.FlagSet, string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run prints a bad flag's error once
	a := &agentFlags{}
	a.register(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, nil, "", err
	}
	fs.Visit(func(f *flag.Flag) { a.ifaceSet = a.ifaceSet || f.Name == "interface" })
	if len(pos) == 0 {
		fs.Usage()
		return nil, nil, "", usageErr("%s: want a service URL (and optionally more URLs of its replicas)", name)
	}
	a.fallbackURLs = pos[1:]
	return a, fs, pos[0], nil
}

// options turns the flags into mesh options.
func (a *agentFlags) options(name string, stderr io.Writer) ([]mesh.Option, error) {
	if a.listenPort > 65535 {
		return nil, usageErr("%s: --listen-port %d: want 0..65535", name, a.listenPort)
	}
	if a.peerIdle < 0 {
		return nil, usageErr("%s: --peer-idle-timeout %v: want 0 (never trim) or a duration such as 5m", name, a.peerIdle)
	}
	if a.token == "" {
		a.token = os.Getenv("WIREMESH_TOKEN")
	}

	stateDir := a.stateDir
	if stateDir == "" && !a.ephemeral {
		d, err := defaultStateDir(agentInstance(a.userspace, a.ifname, a.ifaceSet))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		stateDir = d
	}
	opts := []mesh.Option{
		mesh.WithFallbackURLs(a.fallbackURLs...),
		mesh.WithToken(a.token),
		mesh.WithZone(a.zone),
		mesh.WithStateDir(stateDir),
		mesh.WithHostname(a.hostname),
		mesh.WithListenPort(uint16(a.listenPort)),
		mesh.WithMode(mesh.Kernel),
		mesh.WithInterfaceName(a.ifname),
		mesh.WithPeerIdleTimeout(a.peerIdle),
	}
	if a.userspace {
		opts = append(opts, mesh.WithMode(mesh.Userspace))
	}
	if a.masquerade {
		opts = append(opts, mesh.WithMasquerade())
	}
	if a.ephemeral {
		opts = append(opts, mesh.WithEphemeral())
	}
	for _, s := range a.childPrefixes {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, usageErr("%s: --child-prefix %q: not a CIDR prefix such as 172.24.0.0/24", name, s)
		}
		if p != p.Masked() {
			return nil, usageErr("%s: --child-prefix %q: host bits set, did you mean %s?", name, s, p.Masked())
		}
		opts = append(opts, mesh.WithChildPrefix(p))
	}
	if a.insecureHTTP {
		opts = append(opts, mesh.WithInsecureHTTP())
	}
	if a.noStats {
		opts = append(opts, mesh.WithoutStatsReports())
	}
	level := slog.LevelInfo
	if a.verbose {
		level = slog.LevelDebug
	}
	opts = append(opts, mesh.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))))
	return opts, nil
}

// printSkipped reports routes that became skipped or routed again.
func printSkipped(w io.Writer, before, now []mesh.SkippedRoute) {
	was := map[netip.Prefix]bool{}
	for _, s := range before {
		was[s.Prefix] = true
	}
	is := map[netip.Prefix]bool{}
	for _, s := range now {
		is[s.Prefix] = true
		if !was[s.Prefix] {
			fmt.Fprintf(w, "not routed: %s: %s\n", s.Prefix, s.Reason)
		}
	}
	for _, s := range before {
		if !is[s.Prefix] {
			fmt.Fprintf(w, "routed again: %s\n", s.Prefix)
		}
	}
}

// joinError turns a Join error into an actionable message.
func joinError(name, url string, err error) error {
	var ae *api.Error
	if https, ok := speaksHTTPS(url, err); ok {
		return usageErr("%s: the service at %s speaks HTTPS: use %s", name, url, https)
	}
	switch {
	case strings.Contains(err.Error(), "no join token"):
		// mesh.Join had no token and no registration with this service
		// saved in a state directory (mesh has no sentinel for it yet).
		return usageErr("%s: no join token: pass --token or set WIREMESH_TOKEN (`wiremesh serve` prints one; `wiremesh token create` makes more)", name)
	case errors.Is(err, mesh.ErrKernelModeUnsupported):
		return fmt.Errorf("%s: %w (pass --userspace)", name, err)
	case errors.Is(err, mesh.ErrUnauthorized):
		return fmt.Errorf("%s: the service refused the join token: create a new one with `wiremesh token create` (%w)", name, err)
	case errors.Is(err, mesh.ErrPrefixConflict) && errors.As(err, &ae):
		owner := ae.Owner
		if owner == "" {
			owner = "another member"
		}
		return fmt.Errorf("%s: a requested child prefix overlaps %s, held by %s: choose another prefix, or release that one with `wiremesh prefix release` (%w)", name, ae.Prefix, owner, err)
	case errors.As(err, &ae):
		return fmt.Errorf("%s: the service at %s refused the registration: %w", name, url, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: interrupted: %w", name, err)
	case errors.As(err, new(*tlspin.MismatchError)):
		return fmt.Errorf("%s: the service at %s presents a certificate that is not the one pinned in the join token "+
			"(a token from another service, or the service's certificate was replaced): create a new token with `wiremesh token create`", name, url)
	case errors.As(err, new(x509.UnknownAuthorityError)), errors.As(err, new(*tls.CertificateVerificationError)):
		return fmt.Errorf("%s: the service at %s presents a certificate this machine does not trust: use a join token printed by `wiremesh serve` or `wiremesh token create` (it pins the service's certificate) (%w)", name, url, err)
	default:
		var ne net.Error
		if errors.As(err, &ne) || strings.Contains(err.Error(), "connect") {
			return fmt.Errorf("%s: cannot reach the service at %s: is `wiremesh serve` running there? (%w)", name, url, err)
		}
		return fmt.Errorf("%s %s: %w", name, url, err)
	}
}

func joinAddrs[T fmt.Stringer](as []T) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// printJoined prints the lines that say the node joined, and returns its
// status.
func printJoined(stdout io.Writer, n *mesh.Node) mesh.Status {
	st := n.Status()
	// One write per line: readers (and tests) see whole lines.
	line := fmt.Sprintf("joined zone %q as %q: address %s", st.Self.Zone, st.Self.Hostname, n.Addr())
	if addrs := n.Addrs(); len(addrs) > 1 {
		line += fmt.Sprintf(" and %s", addrs[1])
	}
	line += fmt.Sprintf(", WireGuard port %d", st.Self.ListenPort)
	if st.Self.Interface != "" {
		line += ", interface " + st.Self.Interface
	} else {
		line += ", userspace mode"
	}
	fmt.Fprintln(stdout, line)
	if ps := n.Prefixes(); len(ps) > 0 {
		fmt.Fprintf(stdout, "child prefixes: %s\n", joinAddrs(ps))
	}
	if !st.ControlConnected {
		fmt.Fprintf(stdout, "the service is not reachable: running with the saved peers, retrying in the background\n")
	}
	return st
}
