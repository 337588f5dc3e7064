package mesh_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// A userspace router for a Docker network: members reach 172.24.0.0/24
// through this node, which forwards to the host network without root.
func ExampleWithChildPrefix() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := mesh.Join(ctx, "https://mesh.example.com:8443", mesh.WithToken("wmj_..."),
		mesh.WithChildPrefix(netip.MustParsePrefix("172.24.0.0/24")))
	if errors.Is(err, mesh.ErrPrefixConflict) {
		log.Fatal(err) // names the member holding it
	}
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()
}

// Serving a whole prefix inside the program.
func ExampleWithPrefixHandler() {
	p := netip.MustParsePrefix("10.60.0.0/24")
	h := mesh.PrefixHandlerFuncs{
		TCP: func(c net.Conn, orig netip.AddrPort) {
			fmt.Fprintf(c, "you reached %s from %s\n", orig, c.RemoteAddr())
		},
	}
	n, err := mesh.Join(context.Background(), "https://mesh.example.com:8443", mesh.WithToken("wmj_..."),
		mesh.WithChildPrefix(p), mesh.WithPrefixHandler(p, h))
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close()
}

func ExampleNode_AdvertisePrefix() {
	var n *mesh.Node // from mesh.Join
	ctx := context.Background()
	p := netip.MustParsePrefix("172.28.0.0/24")
	if err := n.AdvertisePrefix(ctx, p); err != nil {
		log.Fatal(err) // ErrPrefixConflict, ErrInvalidPrefix, or the service unreachable
	}
	// ... later: free it for other members.
	if err := n.ReleasePrefix(ctx, p); err != nil {
		log.Fatal(err)
	}
}
