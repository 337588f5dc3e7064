package netstack

import (
	"bytes"
	"errors"
	"net"
	"os"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// UDPConn is a UDP socket of the stack: a gonet.UDPConn whose writes do not
// lose the wake-up of a draining send buffer.
//
// A UDP send buffer holds the packets still in the link endpoint's queue
// (until tun Read takes them); when it is full, a write waits for a
// writable event, which each packet leaving the queue signals.
// gonet.UDPConn.WriteTo (gVisor of 2025-05-03) registers for that event
// only after the write that failed and then waits without writing again:
// if the last queued packets left in between, no event is left to come and
// the write blocks forever, or until its deadline (a write to the node's own
// address was seen stuck for more than 20 s; TestUDPWriteNoLostWakeup makes
// the window happen every time). Write and WriteTo here register, then write
// again before they wait, as gonet.TCPConn.Write does.
//
// gonet keeps its write deadline unexported, so SetDeadline and
// SetWriteDeadline are overridden too. Reads are gonet's, with its timeout
// error replaced by one wrapping os.ErrDeadlineExceeded (see TCPConn);
// Close and the addresses are gonet's.
type UDPConn struct {
	*gonet.UDPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
	wd deadline
}

var (
	_ net.Conn       = (*UDPConn)(nil)
	_ net.PacketConn = (*UDPConn)(nil)
)

// newUDPConn wraps ep, whose events go to wq.
func newUDPConn(wq *waiter.Queue, ep tcpip.Endpoint) *UDPConn {
	c := &UDPConn{UDPConn: gonet.NewUDPConn(wq, ep), ep: ep, wq: wq}
	c.wd.init()
	return c
}

// Read implements net.Conn.Read.
func (c *UDPConn) Read(b []byte) (int, error) {
	n, _, err := c.ReadFrom(b)
	return n, err
}

// ReadFrom implements net.PacketConn.ReadFrom.
func (c *UDPConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	if err != nil {
		err = deadlineError(err)
	}
	return n, addr, err
}

// Write implements net.Conn.Write: it sends b to the connected peer.
func (c *UDPConn) Write(b []byte) (int, error) {
	return c.WriteTo(b, nil)
}

// WriteTo implements net.PacketConn.WriteTo; addr must be a *net.UDPAddr
// (nil: the connected peer). When the send buffer is full it waits for room
// or the write deadline.
func (c *UDPConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	var opts tcpip.WriteOptions
	if addr != nil {
		ua, ok := addr.(*net.UDPAddr)
		if !ok || ua == nil || (len(ua.IP) != 4 && len(ua.IP) != 16) {
			return 0, c.opError(addr, errors.New("netstack: not a UDP address with an IP"))
		}
		// As gonet converts it.
		opts.To = &tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ua.IP), Port: uint16(ua.Port)}
	}
	expired := c.wd.done()
	select {
	case <-expired:
		return 0, c.opError(addr, os.ErrDeadlineExceeded)
	default:
	}
	var (
		r     bytes.Reader
		entry waiter.Entry
		ready <-chan struct{}
	)
	for {
		// A write that fails with ErrWouldBlock reads nothing of r, but
		// start over anyway: a datagram is written whole or not at all.
		r.Reset(b)
		n, err := c.ep.Write(&r, opts)
		switch err.(type) {
		case nil:
			return int(n), nil
		case *tcpip.ErrWouldBlock:
		case *tcpip.ErrClosedForSend, *tcpip.ErrInvalidEndpointState:
			return int(n), c.opError(addr, net.ErrClosed) // callers end their loops on it
		default:
			return int(n), c.opError(addr, errors.New(err.String()))
		}
		if ready == nil {
			// Register, then write again before waiting: the room may
			// have come, and its event gone, since the write failed.
			entry, ready = waiter.NewChannelEntry(waiter.WritableEvents)
			c.wq.EventRegister(&entry)
			defer c.wq.EventUnregister(&entry)
			continue
		}
		select {
		case <-expired:
			return 0, c.opError(addr, os.ErrDeadlineExceeded)
		case <-ready:
		}
	}
}

// SetDeadline implements net.Conn.SetDeadline.
func (c *UDPConn) SetDeadline(t time.Time) error {
	c.wd.set(t)
	return c.UDPConn.SetReadDeadline(t)
}

// SetWriteDeadline implements net.Conn.SetWriteDeadline.
func (c *UDPConn) SetWriteDeadline(t time.Time) error {
	c.wd.set(t)
	return nil
}

func (c *UDPConn) opError(addr net.Addr, err error) *net.OpError {
	return &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: addr, Err: err}
}
