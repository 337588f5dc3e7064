//go:build linux

package udpbind

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dualStack: Open tries one dual-stack socket first. Linux accepts IPv4
// destinations (AF_INET addresses, as golang.org/x/net encodes them) on an
// AF_INET6 socket without IPV6_V6ONLY, and UDP_SEGMENT and UDP_GRO work on
// it for both families.
const dualStack = true

// isDualStack reports whether c is an AF_INET6 socket with IPV6_V6ONLY off.
func isDualStack(c *net.UDPConn) bool {
	if la, ok := c.LocalAddr().(*net.UDPAddr); !ok || la.IP.To4() != nil {
		return false // an IPv4 socket: the host has no IPv6
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	v6only := 1
	rc.Control(func(fd uintptr) {
		if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil {
			v6only = v
		}
	})
	return v6only == 0
}

// msgTrunc is the flag recvmmsg sets on a datagram cut to its buffer.
const msgTrunc = unix.MSG_TRUNC

// oobSize is the control buffer size: one UDP_GRO or UDP_SEGMENT message.
var oobSize = unix.CmsgSpace(2)

// socketBufferSize is the kernel send/receive buffer asked for, as
// wireguard-go's standard bind does: with the default ~200 KiB a burst of
// GSO sends overflows the receiver and TCP inside the tunnel sees losses.
// It is kernel memory used only while datagrams are queued.
const socketBufferSize = 7 << 20

// enableOffload sizes the socket buffers, turns on UDP GRO and probes
// UDP_SEGMENT support.
func enableOffload(c *net.UDPConn) (tx, rx bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return false, false
	}
	rc.Control(func(fd uintptr) {
		// Best effort: the FORCE variants need CAP_NET_ADMIN and bypass rmem_max.
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketBufferSize)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, socketBufferSize)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBufferSize)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBufferSize)
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		tx = err == nil
		rx = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	return tx, rx
}

// groSize returns the segment size of a GRO read from its control data, or 0.
func groSize(oob []byte) int {
	for len(oob) > unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
		oob = rest
	}
	return 0
}

// putSegmentSize writes a UDP_SEGMENT control message into *oob.
func putSegmentSize(oob *[]byte, seg int) {
	b := (*oob)[:cap(*oob)]
	if len(b) < unix.CmsgSpace(2) {
		return
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(seg))
	*oob = b[:unix.CmsgSpace(2)]
}

// shouldDisableGSO reports a send error that means the route cannot do
// UDP_SEGMENT (EIO: no TX checksum offload on the device).
func shouldDisableGSO(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && se.Err == unix.EIO
}

func setMark(c *net.UDPConn, mark uint32) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}
