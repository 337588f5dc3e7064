package mesh_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

func ExampleJoin() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := mesh.Join(ctx, "https://mesh.example.com:8443", mesh.WithToken("wmj_..."))
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()
	fmt.Println("my address:", n.Addr())

	// A service on another member, by hostname or tunnel address.
	resp, err := n.HTTPClient().Get("http://build-server:8080/status")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
}

func ExampleNode_Watch() {
	var n *mesh.Node // from mesh.Join
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for ev := range n.Watch(ctx) {
		switch ev.Type {
		case mesh.PeerAdded:
			fmt.Println("peer up:", ev.Peer.Hostname, ev.Peer.Addrs)
		case mesh.ControlLost:
			fmt.Println("service unreachable:", ev.Err)
		}
	}
}
