//go:build !linux

package mesh

import "fmt"

// kernelPreflight: kernel mode exists on Linux only.
func kernelPreflight(c *config) error {
	return fmt.Errorf("TUN device %q: %w", c.ifname, ErrKernelModeUnsupported)
}

// newKernelPlane: kernel mode exists on Linux only.
func newKernelPlane(c planeConfig) (dataPlane, error) {
	return nil, fmt.Errorf("TUN device %q: %w", c.ifname, ErrKernelModeUnsupported)
}
