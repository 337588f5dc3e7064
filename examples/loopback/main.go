// Command loopback reproduces the seed's loopback scenario on real
// interfaces: every router puts one address of its child prefix on `lo`
// (by default host 10: 172.24.0.10 for 172.24.0.0/24), and every member,
// routers and spokes alike, pings those addresses on all the other
// routers through the mesh. It runs a kernel-mode member (root, Linux):
//
//	sudo loopback -token wmj_... -child-prefix 172.24.0.0/24 https://SERVICE:8443   # node1
//	sudo loopback -token wmj_... -child-prefix 172.28.0.0/24 https://SERVICE:8443   # node2
//	sudo loopback -token wmj_... https://SERVICE:8443                                # a spoke
//
// Every 2 seconds it pings them all, printing one line per address and
// "all N loopback addresses answered" when they did. It runs until
// interrupted, or with -rounds N exits 0 after N such rounds (1 when
// -timeout passes first). On exit it removes the address from lo and the
// member's interface, routes and rules.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "loopback: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	token := flag.String("token", os.Getenv("WIREMESH_TOKEN"), "join token (default $WIREMESH_TOKEN)")
	child := flag.String("child-prefix", "", "this router's child prefix (IPv4 CIDR); none: a spoke")
	host := flag.Int("host", 10, "host number of the loopback address inside each child prefix")
	hostname := flag.String("hostname", "", "name other members see (default: the host name)")
	ifname := flag.String("interface", mesh.DefaultInterfaceName, "TUN device name")
	stateDir := flag.String("state-dir", "", "keep the member's key and registration here")
	insecure := flag.Bool("insecure-http", false, "allow a plain http:// service URL")
	rounds := flag.Int("rounds", 0, "exit after this many rounds in which every address answered; 0: run until interrupted")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up when the rounds are not done by then (with -rounds > 0)")
	verbose := flag.Bool("v", false, "log the member's events")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: loopback [flags] SERVICE_URL\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		return errors.New("want exactly one service URL")
	}
	if *host < 1 || *host > 254 {
		return fmt.Errorf("-host %d: want 1..254", *host)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *rounds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}

	opts := []mesh.Option{
		mesh.WithMode(mesh.Kernel),
		mesh.WithToken(*token),
		mesh.WithInterfaceName(*ifname),
		mesh.WithStateDir(*stateDir),
	}
	if *hostname != "" {
		opts = append(opts, mesh.WithHostname(*hostname))
	}
	if *insecure {
		opts = append(opts, mesh.WithInsecureHTTP())
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	opts = append(opts, mesh.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))))

	var lo netip.Prefix
	if *child != "" {
		p, err := netip.ParsePrefix(*child)
		if err != nil || !p.Addr().Is4() || p != p.Masked() {
			return fmt.Errorf("-child-prefix %q: want an IPv4 network such as 172.24.0.0/24", *child)
		}
		a, ok := hostAddr(p, *host)
		if !ok {
			return fmt.Errorf("-child-prefix %s has no host %d", p, *host)
		}
		lo = netip.PrefixFrom(a, 32)
		opts = append(opts, mesh.WithChildPrefix(p))
	}

	n, err := mesh.Join(ctx, flag.Arg(0), opts...)
	if err != nil {
		return err
	}
	defer n.Close()
	st := n.Status()
	fmt.Printf("joined zone %q as %s (%s) on %s\n", st.Self.Zone, st.Self.Hostname, n.Addr(), st.Self.Interface)
	if lo.IsValid() {
		undo, err := addLoopback(lo)
		if err != nil {
			return err
		}
		defer undo()
		fmt.Printf("%s on lo (inside child prefix %s)\n", lo.Addr(), *child)
	}

	good := 0
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		if pingAll(ctx, n, *host) {
			good++
			if *rounds > 0 && good >= *rounds {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if *rounds > 0 && !errors.Is(ctx.Err(), context.Canceled) {
				return fmt.Errorf("not every loopback address answered within %v", *timeout)
			}
			return nil
		case <-tick.C:
		}
	}
}

// pingAll pings host number host of every IPv4 child prefix of every peer
// and reports whether there was at least one and all answered.
func pingAll(ctx context.Context, n *mesh.Node, host int) bool {
	st := n.Status()
	total, ok := 0, 0
	for _, p := range st.Peers {
		for _, cp := range p.Prefixes {
			a, valid := hostAddr(cp, host)
			if !valid {
				continue
			}
			total++
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			rtt, err := n.Ping(pctx, a)
			cancel()
			if err != nil {
				fmt.Printf("no reply from %s (%s on %s): %v\n", a, cp, p.Hostname, err)
				continue
			}
			ok++
			fmt.Printf("reply from %s (%s on %s) in %v\n", a, cp, p.Hostname, rtt.Round(10*time.Microsecond))
		}
	}
	switch {
	case total == 0:
		fmt.Println("no other router with a child prefix yet")
	case ok == total:
		fmt.Printf("all %d loopback addresses answered\n", total)
	}
	return total > 0 && ok == total
}

// hostAddr returns the address number host of IPv4 prefix p.
func hostAddr(p netip.Prefix, host int) (netip.Addr, bool) {
	if !p.Addr().Is4() || host < 1 || host >= 1<<(32-p.Bits())-1 {
		return netip.Addr{}, false
	}
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(host)
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return a, true
}
