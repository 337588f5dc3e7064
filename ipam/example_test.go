package ipam_test

import (
	"fmt"
	"net/netip"

	"github.com/wiremesh/wiremesh/ipam"
)

func ExampleParsePrefix() {
	for _, s := range []string{"172.24.0.0/24", "10.1.2.3/16", "10.0.0.0/024", "fe80::%eth0/64"} {
		p, err := ipam.ParsePrefix(s)
		fmt.Println(p, err)
	}
	// Output:
	// 172.24.0.0/24 <nil>
	// 10.1.2.3/16 <nil>
	// invalid Prefix invalid prefix "10.0.0.0/024": prefix length "024" has a leading zero
	// invalid Prefix invalid prefix "fe80::%eth0/64": IPv6 zone not allowed in a prefix
}

func ExampleValidateChildPrefix() {
	for _, s := range []string{"172.24.0.0/24", "10.1.2.3/16", "127.0.0.0/8", "0.0.0.0/0", "1.0.0.0/8"} {
		p, _ := ipam.ParsePrefix(s)
		fmt.Println(ipam.ValidateChildPrefix(p, ipam.Policy{}))
	}
	// Output:
	// <nil>
	// invalid prefix "10.1.2.3/16": host bits set (did you mean 10.1.0.0/16?)
	// invalid prefix "127.0.0.0/8": inside loopback (127.0.0.0/8)
	// invalid prefix "0.0.0.0/0": default route not allowed: the zone does not allow exit nodes
	// invalid prefix "1.0.0.0/8": /8 is wider than the zone allows (the shortest IPv4 prefix is /12)
}

func ExamplePool() {
	v4, _ := ipam.NewPool(ipam.DefaultIPv4PoolPrefix)
	v6, _ := ipam.NewPool(ipam.ULAPool("default"))
	i, _ := v4.Index(netip.MustParseAddr("100.64.0.10"))
	a6, _ := v6.Addr(i) // the matching IPv6 address
	fmt.Println(i, a6, v4.Capacity())
	// Output:
	// 10 fd3d:4bb0:38b7::a 65534
}

func ExampleCheckPrefixes() {
	pol := ipam.Policy{Pools: []netip.Prefix{ipam.DefaultIPv4PoolPrefix}}
	held := []netip.Prefix{netip.MustParsePrefix("10.78.0.0/16")}
	for _, s := range []string{"172.24.0.0/24", "10.78.1.0/24", "100.64.0.0/24", "1.0.0.0/8"} {
		set, err := ipam.CheckPrefixes(pol, held, []netip.Prefix{netip.MustParsePrefix(s)})
		fmt.Println(set, err)
	}
	// Output:
	// [10.78.0.0/16 172.24.0.0/24] <nil>
	// [] prefix 10.78.1.0/24 overlaps 10.78.0.0/16 held by this device
	// [] prefix 100.64.0.0/24 overlaps 100.64.0.0/16 held by tunnel pool
	// [] invalid prefix "1.0.0.0/8": /8 is wider than the zone allows (the shortest IPv4 prefix is /12)
}
