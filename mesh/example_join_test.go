package mesh_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/mesh"
)

// Two programs join a mesh in userspace (no root, no TUN device, no open
// port) and one dials the other by hostname. The coordination service runs
// in-process on 127.0.0.1 here; in production it is `wiremesh serve`, and
// the join token comes from `wiremesh token create`.
func ExampleJoin() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The coordination service, with a self-signed certificate: the join
	// token carries its fingerprint, and Join pins it.
	dir, err := os.MkdirTemp("", "wiremesh-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	svc, err := control.Start(ctx, control.Options{DataDir: dir, Listen: "127.0.0.1:0", STUNListen: "127.0.0.1:0"})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Close()
	token, err := svc.CreateJoinToken(ctx, "default", true, 0)
	if err != nil {
		log.Fatal(err)
	}

	// The first member serves TCP on its tunnel addresses.
	server, err := mesh.Join(ctx, svc.URL(), mesh.WithToken(token), mesh.WithHostname("server"))
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	l, err := server.Listen("tcp", ":8080")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // l closed
			}
			fmt.Fprintf(c, "hello from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	events := server.Watch(ctx) // before the second member joins

	// The second member joins and knows the first at once (Join returns
	// with the zone's peer list applied).
	client, err := mesh.Join(ctx, svc.URL(), mesh.WithToken(token), mesh.WithHostname("client"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	for ev := range events {
		if ev.Type == mesh.PeerAdded {
			fmt.Println("server: peer up:", ev.Peer.Hostname)
			break
		}
	}

	// Hostnames resolve against the peer list, never DNS.
	c, err := client.Dial(ctx, "tcp", "server:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	greeting, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(greeting)
	fmt.Println("server's address:", server.Addr())
	// Output:
	// server: peer up: client
	// hello from 100.64.0.1:8080
	// server's address: 100.64.0.1
}
