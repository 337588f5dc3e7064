//go:build !linux

package main

import (
	"errors"
	"net/netip"
)

// addLoopback needs Linux, like kernel mode.
func addLoopback(netip.Prefix) (func(), error) {
	return nil, errors.New("this example needs Linux (kernel mode and netlink)")
}
