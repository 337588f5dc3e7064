//go:build !linux

package route

import "net/netip"

// DockerUser is Docker's DOCKER-USER rules of a mesh interface; on this
// platform NewDockerUser always fails.
type DockerUser struct{}

// DockerUserExists returns ErrUnsupported on this platform.
func DockerUserExists(opts ...Option) (bool, error) { return false, ErrUnsupported }

// NewDockerUser returns ErrUnsupported on this platform.
func NewDockerUser(cfg DockerUserConfig, opts ...Option) (*DockerUser, error) {
	return nil, ErrUnsupported
}

// Prefixes returns nil.
func (*DockerUser) Prefixes() []netip.Prefix { return nil }

// Update returns ErrUnsupported.
func (*DockerUser) Update([]netip.Prefix) error { return ErrUnsupported }

// Close returns ErrUnsupported.
func (*DockerUser) Close() error { return ErrUnsupported }

// CleanupDockerUser returns ErrUnsupported on this platform.
func CleanupDockerUser(ifname string, opts ...Option) (int, error) { return 0, ErrUnsupported }

// DockerBridgePrefixes returns ErrUnsupported on this platform.
func DockerBridgePrefixes(prefixes []netip.Prefix, opts ...Option) ([]netip.Prefix, error) {
	return nil, ErrUnsupported
}
