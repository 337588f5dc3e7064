// Command spoke joins a wiremesh mesh in userspace — no root, no TUN
// device, no inbound port — and talks to services behind other members'
// child prefixes.
//
//	go run ./examples/spoke -service https://mesh.example.com:8443 -token wmj_... \
//		-dial 172.24.0.10:80 -dial 172.28.0.10:80
//
// For each -dial address it waits until a member advertises a prefix
// holding it, pings it, connects, and (unless -raw) sends an HTTP GET and
// prints the status line and the start of the body. It exits non-zero when
// any address could not be reached. See README.md for the full scenario.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

type addrList []netip.AddrPort

func (l *addrList) String() string { return fmt.Sprint(*l) }

func (l *addrList) Set(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("want IP:PORT: %w", err)
	}
	*l = append(*l, ap)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "spoke:", err)
		os.Exit(1)
	}
}

func run() error {
	var dials addrList
	service := flag.String("service", "", "URL of the wiremesh service (required)")
	token := flag.String("token", os.Getenv("WIREMESH_TOKEN"), "join token (default $WIREMESH_TOKEN)")
	zone := flag.String("zone", "", "zone to join (default: the token's zone)")
	stateDir := flag.String("state-dir", "", "keep the node's identity here across runs (default: ephemeral)")
	hostname := flag.String("hostname", "spoke", "name other members see")
	insecure := flag.Bool("insecure-http", false, "allow a plain http:// service URL on a non-loopback host")
	raw := flag.Bool("raw", false, "only connect (TCP), no HTTP request")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for a member to route each address")
	verbose := flag.Bool("v", false, "log the agent's work on stderr")
	flag.Var(&dials, "dial", "IP:PORT of a service behind a member's child prefix (repeatable, required)")
	flag.Parse()
	if *service == "" || len(dials) == 0 || flag.NArg() != 0 {
		flag.Usage()
		return errors.New("-service and at least one -dial are required")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	opts := []mesh.Option{
		mesh.WithToken(*token),
		mesh.WithHostname(*hostname),
		mesh.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))),
	}
	if *zone != "" {
		opts = append(opts, mesh.WithZone(*zone))
	}
	if *stateDir != "" {
		opts = append(opts, mesh.WithStateDir(*stateDir))
	}
	if *insecure {
		opts = append(opts, mesh.WithInsecureHTTP())
	}
	joinCtx, cancel := context.WithTimeout(ctx, time.Minute)
	n, err := mesh.Join(joinCtx, *service, opts...)
	cancel()
	if err != nil {
		return err
	}
	defer n.Close()
	st := n.Status()
	fmt.Printf("joined zone %q as %s (%s), %d peers\n", st.Self.Zone, st.Self.Hostname, n.Addr(), len(st.Peers))

	failed := 0
	for _, ap := range dials {
		if err := visit(ctx, n, ap, *wait, *raw); err != nil {
			fmt.Printf("%s: %v\n", ap, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d addresses not reached", failed, len(dials))
	}
	return nil
}

// visit waits for a route to ap, pings it, connects and talks to it.
func visit(ctx context.Context, n *mesh.Node, ap netip.AddrPort, wait time.Duration, raw bool) error {
	via, err := waitRoute(ctx, n, ap.Addr(), wait)
	if err != nil {
		return err
	}
	fmt.Printf("%s: routed through %s\n", ap, via)

	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	rtt, err := n.Ping(pctx, ap.Addr())
	cancel()
	if err != nil {
		fmt.Printf("%s: no ping reply (%v)\n", ap, err)
	} else {
		fmt.Printf("%s: ping %v\n", ap, rtt.Round(10*time.Microsecond))
	}

	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	start := time.Now()
	c, err := n.Dial(dctx, "tcp", ap.String())
	if err != nil {
		return err
	}
	fmt.Printf("%s: connected in %v\n", ap, time.Since(start).Round(10*time.Microsecond))
	if raw {
		return c.Close()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, "http://"+ap.String()+"/", nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "wiremesh-spoke-example")
	req.Close = true
	if err := req.Write(c); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	fmt.Printf("%s: HTTP %s\n", ap, resp.Status)
	if s := strings.TrimSpace(string(body)); s != "" {
		fmt.Printf("%s\n", indent(s))
	}
	return nil
}

// waitRoute returns the member whose tunnel address or child prefix holds
// a, waiting up to wait for one to appear (peers arrive from the service's
// watch stream).
func waitRoute(ctx context.Context, n *mesh.Node, a netip.Addr, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		for _, p := range n.Status().Peers {
			for _, pre := range p.Prefixes {
				if pre.Contains(a) {
					return fmt.Sprintf("%s (prefix %s)", p.Hostname, pre), nil
				}
			}
			for _, pa := range p.Addrs {
				if pa == a {
					return p.Hostname, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("waited %v: %w", wait, &mesh.NoRouteError{Addr: a})
		}
		select {
		case <-ctx.Done():
			return "", context.Cause(ctx)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
