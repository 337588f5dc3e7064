package ipam_test

import (
	"fmt"
	"net/netip"

	"github.com/wiremesh/wiremesh/ipam"
)

func ExampleParsePrefix() {
	for _, s := range []string{"172.24.0.0/24", "10.1.2.3/16", "127.0.0.0/8", "0.0.0.0/0"} {
		p, err := ipam.ParsePrefix(s, ipam.Policy{})
		fmt.Println(p, err)
	}
	// Output:
	// 172.24.0.0/24 <nil>
	// invalid Prefix invalid prefix "10.1.2.3/16": host bits set (did you mean 10.1.0.0/16?)
	// invalid Prefix invalid prefix "127.0.0.0/8": inside loopback (127.0.0.0/8)
	// invalid Prefix invalid prefix "0.0.0.0/0": default route not allowed: the zone does not allow exit nodes
}

func ExamplePool() {
	v4, _ := ipam.NewPool(ipam.DefaultIPv4PoolPrefix)
	v6, _ := ipam.NewPool(ipam.ULAPool("default"))
	a4, _ := v4.Allocate(netip.Addr{})                       // lowest free
	b4, _ := v4.Allocate(netip.MustParseAddr("100.64.0.10")) // requested
	i, _ := v4.Index(b4)
	b6, _ := v6.Addr(i) // the matching IPv6 address
	_, err := v4.Allocate(netip.MustParseAddr("100.64.0.10"))
	fmt.Println(a4, b4, b6)
	fmt.Println(err)
	// Output:
	// 100.64.0.1 100.64.0.10 fd3d:4bb0:38b7::a
	// ipam: allocate 100.64.0.10 in pool 100.64.0.0/16: address in use
}

func ExampleRegistry() {
	r := ipam.NewRegistry()
	r.Reserve(ipam.DefaultIPv4PoolPrefix, ipam.TunnelPoolOwner)
	fmt.Println(r.Add(netip.MustParsePrefix("172.24.0.0/24"), "node1"))
	fmt.Println(r.Add(netip.MustParsePrefix("172.24.0.128/25"), "node2"))
	fmt.Println(r.Add(netip.MustParsePrefix("100.64.0.0/10"), "node2"))
	e, _ := r.Lookup(netip.MustParseAddr("172.24.0.2"))
	fmt.Println(e.Owner, e.Prefix)
	// Output:
	// <nil>
	// prefix 172.24.0.128/25 overlaps 172.24.0.0/24 held by node1
	// prefix 100.64.0.0/10 overlaps 100.64.0.0/16 held by tunnel pool
	// node1 172.24.0.0/24
}
