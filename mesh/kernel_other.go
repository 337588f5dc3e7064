//go:build !linux

package mesh

import "fmt"

// kernelPreflight: kernel mode exists on Linux only.
func kernelPreflight(c *config) error {
	return fmt.Errorf("TUN device %q: %w", c.ifname, ErrKernelModeUnsupported)
}

func (n *Node) newKernelDevice(port uint16) (*wgDevice, error) {
	return nil, fmt.Errorf("TUN device %q: %w", n.cfg.ifname, ErrKernelModeUnsupported)
}
