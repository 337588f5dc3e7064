//go:build linux

package route

import (
	"fmt"
	"runtime"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// handle opens a netlink handle in the configured namespace.
func (o *options) handle() (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(o.ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	return h, nil
}

// ownNS returns a duplicate of the configured namespace handle that the
// caller owns and must close, or netns.None() for the caller's namespace.
func (o *options) ownNS() (netns.NsHandle, error) {
	if !o.ns.IsOpen() {
		return netns.None(), nil
	}
	fd, err := unix.FcntlInt(uintptr(o.ns), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return netns.None(), fmt.Errorf("duplicate netns handle: %w", err)
	}
	return netns.NsHandle(fd), nil
}

// nftConn opens an nftables connection in namespace ns (None: the caller's).
func nftConn(ns netns.NsHandle) (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// inNetNS runs f on an OS thread switched into ns (None: runs f directly).
// The thread is never switched back: it stays locked and exits with its
// goroutine, so no other goroutine ever runs in ns by accident.
// It is needed for /proc/sys/net, which shows the opening thread's namespace.
func inNetNS(ns netns.NsHandle, f func() error) error {
	if !ns.IsOpen() {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
