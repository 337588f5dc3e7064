//go:build !linux

package route

import "net/netip"

// IsForwardingSysctl reports false on this platform.
func IsForwardingSysctl(path string) bool { return false }

// ForwardingSysctls returns ErrUnsupported on this platform.
func ForwardingSysctls(ifnames []string, v4, v6 bool, opts ...Option) ([]string, error) {
	return nil, ErrUnsupported
}

// EnableInterfaceForwarding returns ErrUnsupported on this platform.
func EnableInterfaceForwarding(paths []string, opts ...Option) (restore func() error, err error) {
	return nil, ErrUnsupported
}

// RestoreForwardingSysctl returns ErrUnsupported on this platform.
func RestoreForwardingSysctl(path, old string, opts ...Option) error { return ErrUnsupported }

// PrefixInterfaces returns ErrUnsupported on this platform.
func PrefixInterfaces(prefixes []netip.Prefix, exclude string, opts ...Option) ([]string, error) {
	return nil, ErrUnsupported
}
