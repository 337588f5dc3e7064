package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/mesh"
)

const (
	demoTimeout = 30 * time.Second
	demoTCPPort = 7000
	demoUDPPort = 7001
)

// runDemo implements `wiremesh demo`: an embedded service and three
// userspace members in this process, checking TCP, UDP and ping between
// every pair.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", demoTimeout, "give up after this long")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: wiremesh demo [--timeout D]\n\nStarts a coordination service and three userspace members in this process\nand checks TCP, UDP and ping between every pair of members.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("demo: unexpected arguments %q", fs.Args())
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := demo(ctx, stdout); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("demo: did not finish within %v: %w", *timeout, err)
		}
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

func demo(ctx context.Context, stdout io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "wiremesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(stdout, "starting a coordination service on 127.0.0.1 (data in %s) ...\n", dir)
	svc, err := control.Start(ctx, control.Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "off"})
	if err != nil {
		return err
	}
	defer svc.Close()
	token, err := svc.CreateJoinToken(ctx, "default", true, 0)
	if err != nil {
		return fmt.Errorf("create join token: %w", err)
	}

	names := []string{"alpha", "beta", "gamma"}
	nodes := make([]*mesh.Node, len(names))
	var wg sync.WaitGroup // echo servers; they end when their node closes
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
		wg.Wait()
	}()
	for i, name := range names {
		n, err := mesh.Join(ctx, svc.URL(), mesh.WithToken(token), mesh.WithHostname(name))
		if err != nil {
			return fmt.Errorf("member %s: %w", name, err)
		}
		nodes[i] = n
		fmt.Fprintf(stdout, "member %s joined with address %s\n", name, n.Addr())
		if err := serveEcho(n, &wg); err != nil {
			return fmt.Errorf("member %s: %w", name, err)
		}
	}
	for i, n := range nodes {
		if err := waitPeers(ctx, n, len(nodes)-1); err != nil {
			return fmt.Errorf("member %s: %w", names[i], err)
		}
	}

	type row struct {
		from, addr, to string
		tcp, udp       error
		rtt            time.Duration
		path           string
		ping           error
	}
	var rows []row
	for i, a := range nodes {
		for j, b := range nodes {
			if i == j {
				continue
			}
			r := row{from: names[i], addr: a.Addr().String(), to: names[j]}
			r.tcp = checkTCP(ctx, a, b.Addr())
			r.udp = checkUDP(ctx, a, b.Addr())
			r.rtt, r.ping = a.Ping(ctx, b.Addr())
			r.path = pathTo(a, b)
			rows = append(rows, r)
		}
	}

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tADDRESS\tPEER\tPATH\tTCP\tUDP\tPING RTT")
	ok := func(err error) string {
		if err != nil {
			return "FAIL"
		}
		return "ok"
	}
	var errs []error
	for _, r := range rows {
		rtt := r.rtt.Round(10 * time.Microsecond).String()
		if r.ping != nil {
			rtt = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.from, r.addr, r.to, r.path, ok(r.tcp), ok(r.udp), rtt)
		for what, err := range map[string]error{"tcp": r.tcp, "udp": r.udp, "ping": r.ping} {
			if err != nil {
				errs = append(errs, fmt.Errorf("%s -> %s %s: %w", r.from, r.to, what, err))
			}
		}
	}
	tw.Flush()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	fmt.Fprintln(stdout, "all members reach each other over TCP, UDP and ICMP")
	return nil
}

// pathTo says how a sends to b: "direct" or "relay" (see mesh.PeerStatus).
func pathTo(a, b *mesh.Node) string {
	k := b.Status().Self.PublicKey
	for _, p := range a.Status().Peers {
		if p.PublicKey == k && p.Path != "" {
			return p.Path
		}
	}
	return "-"
}

// serveEcho runs TCP and UDP echo servers on the node until it closes.
func serveEcho(n *mesh.Node, wg *sync.WaitGroup) error {
	l, err := n.Listen("tcp4", fmt.Sprintf(":%d", demoTCPPort))
	if err != nil {
		return err
	}
	pc, err := n.ListenPacket("udp4", fmt.Sprintf(":%d", demoUDPPort))
	if err != nil {
		l.Close()
		return err
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		var cwg sync.WaitGroup
		defer cwg.Wait()
		defer l.Close()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(demoTimeout))
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		defer wg.Done()
		defer pc.Close()
		buf := make([]byte, 2048)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:k], from)
		}
	}()
	// Closing the node does not wake Accept/ReadFrom on the netstack: close
	// them when it stops.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range n.Watch(context.Background()) {
		}
		l.Close()
		pc.Close()
	}()
	return nil
}

func waitPeers(ctx context.Context, n *mesh.Node, count int) error {
	for len(n.Status().Peers) != count {
		select {
		case <-ctx.Done():
			return fmt.Errorf("sees %d peers, want %d: %w", len(n.Status().Peers), count, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func checkTCP(ctx context.Context, n *mesh.Node, to netip.Addr) error {
	c, err := n.Dial(ctx, "tcp", netip.AddrPortFrom(to, demoTCPPort).String())
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	msg := []byte("hello over tcp from " + n.Addr().String())
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo returned %q, want %q", got, msg)
	}
	return nil
}

// checkUDP sends a datagram and waits for its echo, resending every second
// (UDP may lose the first packet while the tunnel handshakes).
func checkUDP(ctx context.Context, n *mesh.Node, to netip.Addr) error {
	c, err := n.Dial(ctx, "udp", netip.AddrPortFrom(to, demoUDPPort).String())
	if err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("hello over udp from " + n.Addr().String())
	buf := make([]byte, 2048)
	for ctx.Err() == nil {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		k, err := c.Read(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(buf[:k], msg) {
			return fmt.Errorf("echo returned %q, want %q", buf[:k], msg)
		}
		return nil
	}
	return ctx.Err()
}
