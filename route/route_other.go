//go:build !linux

package route

import (
	"context"
	"net/netip"
)

// Linux is the kernel route table; on this platform NewLinux always fails.
type Linux struct{}

var _ Table = (*Linux)(nil)

// NewLinux returns ErrUnsupported on this platform.
func NewLinux(ifname string, opts ...Option) (*Linux, error) { return nil, ErrUnsupported }

// Apply returns ErrUnsupported.
func (*Linux) Apply(context.Context, Desired) (Result, error) { return Result{}, ErrUnsupported }

// Lookup reports no match.
func (*Linux) Lookup(netip.Addr) (netip.Prefix, bool) { return netip.Prefix{}, false }

// Close returns ErrUnsupported.
func (*Linux) Close() error { return ErrUnsupported }

// Firewall is the nftables rule set; on this platform NewFirewall always fails.
type Firewall struct{}

// NewFirewall returns ErrUnsupported on this platform.
func NewFirewall(cfg FirewallConfig, opts ...Option) (*Firewall, error) { return nil, ErrUnsupported }

// Prefixes returns nil.
func (*Firewall) Prefixes() []netip.Prefix { return nil }

// Update returns ErrUnsupported.
func (*Firewall) Update([]netip.Prefix) error { return ErrUnsupported }

// Close returns ErrUnsupported.
func (*Firewall) Close() error { return ErrUnsupported }

// EnableForwarding returns ErrUnsupported on this platform.
func EnableForwarding(v4, v6 bool, opts ...Option) (restore func() error, err error) {
	return nil, ErrUnsupported
}

// CleanupLeftovers returns ErrUnsupported on this platform.
func CleanupLeftovers(ifname, table string, opts ...Option) error { return ErrUnsupported }
