//go:build linux

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
)

// addLoopback puts a on lo and returns a function removing it (unless it
// was there already).
func addLoopback(a netip.Prefix) (func(), error) {
	link, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("lo: %w", err)
	}
	addr := &netlink.Addr{IPNet: netipToIPNet(a)}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("lo: %w", err)
	}
	if slices.ContainsFunc(addrs, func(x netlink.Addr) bool { return x.IPNet.String() == addr.IPNet.String() }) {
		return func() {}, nil
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return nil, fmt.Errorf("add %s to lo: %w", a, err)
	}
	return func() {
		if err := netlink.AddrDel(link, addr); err != nil {
			fmt.Fprintf(os.Stderr, "loopback: remove %s from lo: %v\n", a, err)
		}
	}, nil
}

func netipToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
