package meshtest_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// An in-process service, two userspace members, and a TCP exchange between
// them through their WireGuard tunnel.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := meshtest.Open()
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	join := func(name string) *mesh.Node {
		n, err := mesh.Join(ctx, s.URL, mesh.WithToken(s.Token), mesh.WithHostname(name))
		if err != nil {
			log.Fatal(err)
		}
		return n
	}
	a, b := join("a"), join("b")
	defer a.Close()
	defer b.Close()
	fmt.Println("a:", a.Addr())
	fmt.Println("b:", b.Addr())

	// b answers one line on its tunnel address.
	ln, err := b.Listen("tcp", netip.AddrPortFrom(b.Addr(), 80).String())
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "b got %s", line)
	}()

	// a learns about b through the service's watch stream, then dials it.
	for len(a.Status().Peers) != 1 {
		select {
		case <-ctx.Done():
			log.Fatal("a never saw b")
		case <-time.After(20 * time.Millisecond):
		}
	}
	c, err := a.Dial(ctx, "tcp", netip.AddrPortFrom(b.Addr(), 80).String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintln(c, "hello from a")
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(reply)
	// Output:
	// a: 100.64.0.1
	// b: 100.64.0.2
	// b got hello from a
}
