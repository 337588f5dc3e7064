package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
)

const joinUsage = `usage: wiremesh join [flags] URL

Joins the mesh coordinated by the service at URL and stays a member until
interrupted (SIGINT/SIGTERM).

flags:
`

// runJoin implements `wiremesh join`.
func runJoin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("join", flag.ContinueOnError)
	fs.SetOutput(stderr)
	token := fs.String("token", "", "join token (default $WIREMESH_TOKEN)")
	stateDir := fs.String("state-dir", "", "directory keeping the node's key and last peer list (default: none, ephemeral identity)")
	zone := fs.String("zone", "", "zone to join (default: the join token's zone)")
	hostname := fs.String("hostname", "", "name other members see (default: the host name)")
	listenPort := fs.Uint("listen-port", 0, "WireGuard UDP port (default: saved or random)")
	userspace := fs.Bool("userspace", false, "run in userspace mode (no root, no TUN device)")
	insecureHTTP := fs.Bool("insecure-http", false, "allow a plain http:// service URL on a non-loopback host")
	verbose := fs.Bool("v", false, "verbose logs on stderr")
	fs.Usage = func() {
		fmt.Fprint(stderr, joinUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("join: want exactly one service URL, got %d arguments", len(pos))
	}
	url := pos[0]
	if *listenPort > 65535 {
		return fmt.Errorf("join: --listen-port %d: want 0..65535", *listenPort)
	}
	if !*userspace {
		return errors.New("join: kernel mode (TUN device, host routes) is not available yet: pass --userspace to join in userspace mode")
	}
	if *token == "" {
		*token = os.Getenv("WIREMESH_TOKEN")
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := []mesh.Option{
		mesh.WithMode(mesh.Userspace),
		mesh.WithToken(*token),
		mesh.WithZone(*zone),
		mesh.WithStateDir(*stateDir),
		mesh.WithHostname(*hostname),
		mesh.WithListenPort(uint16(*listenPort)),
	}
	if *insecureHTTP {
		opts = append(opts, mesh.WithInsecureHTTP())
	}
	if *verbose {
		opts = append(opts, mesh.WithLogger(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}

	fmt.Fprintf(stdout, "registering with %s ...\n", url)
	n, err := mesh.Join(ctx, url, opts...)
	if err != nil {
		return joinError(url, err)
	}
	defer n.Close()

	st := n.Status()
	fmt.Fprintf(stdout, "joined zone %q as %q: address %s", st.Self.Zone, st.Self.Hostname, n.Addr())
	if addrs := n.Addrs(); len(addrs) > 1 {
		fmt.Fprintf(stdout, " and %s", addrs[1])
	}
	fmt.Fprintf(stdout, ", WireGuard port %d\n", st.Self.ListenPort)
	if !st.ControlConnected {
		fmt.Fprintf(stdout, "the service is not reachable: running with the saved peers, retrying in the background\n")
	}
	events := n.Watch(ctx)
	for _, p := range st.Peers {
		fmt.Fprintf(stdout, "peer up: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	}
	for ev := range events {
		switch ev.Type {
		case mesh.PeerAdded:
			fmt.Fprintf(stdout, "peer up: %s %s\n", ev.Peer.Hostname, joinAddrs(ev.Peer.Addrs))
		case mesh.PeerUpdated:
			fmt.Fprintf(stdout, "peer changed: %s %s\n", ev.Peer.Hostname, joinAddrs(ev.Peer.Addrs))
		case mesh.PeerRemoved:
			fmt.Fprintf(stdout, "peer gone: %s %s\n", ev.Peer.Hostname, joinAddrs(ev.Peer.Addrs))
		case mesh.ControlLost:
			fmt.Fprintf(stdout, "lost the service (%v): the mesh keeps working with the known peers\n", ev.Err)
		case mesh.ControlRestored:
			fmt.Fprintf(stdout, "connected to the service\n")
		}
	}
	fmt.Fprintf(stdout, "leaving (the node keeps its registration)\n")
	if err := n.Close(); err != nil {
		return fmt.Errorf("join: close: %w", err)
	}
	return nil
}

// joinError turns a Join error into an actionable message.
func joinError(url string, err error) error {
	var ae *api.Error
	switch {
	case errors.Is(err, mesh.ErrKernelModeUnsupported):
		return fmt.Errorf("join: %w", err)
	case errors.Is(err, mesh.ErrUnauthorized):
		return fmt.Errorf("join: the service refused the join token: create a new one with `wiremesh token create` (%w)", err)
	case errors.Is(err, mesh.ErrPrefixConflict) && errors.As(err, &ae):
		owner := ae.Owner
		if owner == "" {
			owner = "another member"
		}
		return fmt.Errorf("join: prefix %s is already held by %s: choose another prefix or release it with `wiremesh prefix release` (%w)", ae.Prefix, owner, err)
	case errors.As(err, &ae):
		return fmt.Errorf("join: the service at %s refused the registration: %w", url, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("join: interrupted: %w", err)
	default:
		var ne net.Error
		if errors.As(err, &ne) || strings.Contains(err.Error(), "connect") {
			return fmt.Errorf("join: cannot reach the service at %s: %w", url, err)
		}
		return fmt.Errorf("join %s: %w", url, err)
	}
}

func joinAddrs[T fmt.Stringer](as []T) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// parseInterleaved parses flags that may come before or after positional
// arguments; everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos, rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
