package mesh_test

import (
	"context"
	"fmt"

	"github.com/wiremesh/wiremesh/mesh"
)

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
