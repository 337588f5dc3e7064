package netstack

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// drainOnWouldBlock is a UDP endpoint whose Write, when the send buffer is
// full, lets tun Read take every queued packet before it reports
// ErrWouldBlock: the buffer drains, and its last writable event fires,
// right between the failed write and the writer's next step.
type drainOnWouldBlock struct {
	tcpip.Endpoint
	n      *Net
	drains int
}

func (e *drainOnWouldBlock) Write(p tcpip.Payloader, opts tcpip.WriteOptions) (int64, tcpip.Error) {
	m, err := e.Endpoint.Write(p, opts)
	if _, ok := err.(*tcpip.ErrWouldBlock); ok {
		e.drains++
		drainTun(e.n)
	}
	return m, err
}

// drainTun reads (and drops) every packet queued for the tunnel; it does not
// block once the queue is empty.
func drainTun(n *Net) {
	bufs, sizes := make([][]byte, n.BatchSize()), make([]int, n.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, n.mtu+64)
	}
	for n.ep.queued.Load() > 0 {
		if _, err := n.Read(bufs, sizes, 0); err != nil {
			return
		}
	}
}

// TestUDPWriteNoLostWakeup: a UDP write that finds the send buffer full must
// not miss the buffer draining before it waits. gonet.UDPConn.WriteTo
// registered for writable events only after its failed write and waited
// without writing again: when the last queued packets left in between, no
// writable event was left to come and the write blocked forever (a netstack
// write to the node's own address was seen stuck > 20 s). The endpoint here
// drains the tunnel queue inside that window, every time.
func TestUDPWriteNoLostWakeup(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	require.Nil(t, terr)
	hook := &drainOnWouldBlock{Endpoint: ep, n: n}
	c := newUDPConn(&wq, hook)
	defer c.Close()
	require.Nil(t, ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(testAddrB.AsSlice()), Port: 7000}))

	// Nothing reads the tunnel: the packets stay queued and fill the send
	// buffer until a write would block and the hook drains them.
	msg := make([]byte, 1000)
	for i := 0; hook.drains < 3; i++ {
		require.Less(t, i, 10000, "the send buffer never filled")
		require.NoError(t, c.SetWriteDeadline(time.Now().Add(2*time.Second)))
		_, err := c.Write(msg)
		require.NoError(t, err, "write %d after %d drains", i, hook.drains)
	}
}

// TestUDPWriteToSelfKeepsFlowing: the reviewer's case without a hook: UDP to
// the node's own address through a small send buffer, tun Read looping the
// packets back. Each write must finish well within its deadline.
func TestUDPWriteToSelfKeepsFlowing(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	ln, err := n.ListenUDPAddrPort(netip.AddrPortFrom(testAddrA, 7000))
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := ln.ReadFrom(b); err != nil {
				return
			}
		}
	}()
	go drainLoop(n)

	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	require.Nil(t, terr)
	ep.SocketOptions().SetSendBufferSize(1, true) // the minimum: a packet or two in flight
	c := newUDPConn(&wq, ep)
	defer c.Close()
	require.Nil(t, ep.Connect(tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(testAddrA.AsSlice()), Port: 7000}))

	msg := make([]byte, 1200)
	end := time.Now().Add(time.Second)
	i := 0
	for ; time.Now().Before(end); i++ {
		require.NoError(t, c.SetWriteDeadline(time.Now().Add(time.Second)))
		_, err := c.Write(msg)
		require.NoError(t, err, "write %d", i)
	}
	t.Logf("%d writes", i)
}

// drainLoop is wireguard-go's tun reader: it reads until the Net closes.
func drainLoop(n *Net) {
	bufs, sizes := make([][]byte, n.BatchSize()), make([]int, n.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, n.mtu+64)
	}
	for {
		if _, err := n.Read(bufs, sizes, 0); err != nil {
			return
		}
	}
}

// TestUDPConnDeadlines: UDPConn keeps its own write deadline (gonet's is
// unexported); writes blocked on a full send buffer end at it, reads keep
// gonet's deadline, and both work through SetDeadline.
func TestUDPConnDeadlines(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	c, err := n.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(testAddrB, 7000))
	require.NoError(t, err)
	defer c.Close()
	c.ep.SocketOptions().SetSendBufferSize(1, true)
	// Reads and writes fail as the net package's do (deadline_test.go
	// checks os.ErrDeadlineExceeded on reads).
	requireTimeout := func(err error) {
		t.Helper()
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout())
	}

	// Nothing reads the tunnel: the first datagram fills the buffer.
	_, err = c.Write([]byte("fills the buffer"))
	require.NoError(t, err)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(50*time.Millisecond)))
	start := time.Now()
	_, err = c.Write([]byte("blocks"))
	requireTimeout(err)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)
	_, err = c.Write([]byte("expired"))
	requireTimeout(err)

	// A deadline moved into the past ends a blocked write; one moved later
	// (or cleared) does not end it early, and room lets it through.
	require.NoError(t, c.SetWriteDeadline(time.Time{}))
	done := make(chan error, 1)
	go func() { _, err := c.Write([]byte("waits")); done <- err }()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, c.SetWriteDeadline(time.Now().Add(time.Hour)))
	select {
	case err := <-done:
		t.Fatalf("write returned %v while the buffer was full", err)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, c.SetDeadline(time.Now().Add(-time.Second)))
	requireTimeout(<-done)
	_, err = c.Read(make([]byte, 16))
	requireTimeout(err)

	require.NoError(t, c.SetDeadline(time.Time{}))
	go func() { _, err := c.Write([]byte("waits for room")); done <- err }()
	time.Sleep(20 * time.Millisecond)
	drainTun(n)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the write did not go through when the tunnel was read")
	}
}

// TestUDPConnWriteTo: an unconnected UDPConn sends with WriteTo and
// receives with ReadFrom; a net.Addr other than *net.UDPAddr is an error,
// not gonet's panic.
func TestUDPConnWriteTo(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	go drainLoop(n)
	a, err := n.ListenUDPAddrPort(netip.AddrPortFrom(testAddrA, 7000))
	require.NoError(t, err)
	defer a.Close()
	b, err := n.ListenUDPAddrPort(netip.AddrPortFrom(testAddrA, 7001))
	require.NoError(t, err)
	defer b.Close()
	require.Nil(t, b.RemoteAddr())
	require.Equal(t, "10.77.0.1:7001", b.LocalAddr().String())

	require.NoError(t, b.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = b.WriteTo([]byte("hi"), a.LocalAddr())
	require.NoError(t, err)
	require.NoError(t, a.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 16)
	m, from, err := a.ReadFrom(buf)
	require.NoError(t, err)
	require.Equal(t, "hi", string(buf[:m]))
	require.Equal(t, b.LocalAddr().String(), from.String())

	_, err = b.WriteTo([]byte("hi"), &net.TCPAddr{IP: net.IP(testAddrA.AsSlice()), Port: 7000})
	require.Error(t, err)
	var nilAddr *net.UDPAddr
	_, err = b.WriteTo([]byte("hi"), nilAddr)
	require.Error(t, err, "a nil *net.UDPAddr is an error, not a panic")
	_, err = b.Write([]byte("hi"))
	require.Error(t, err, "unconnected")
	require.NoError(t, b.Close())
	_, err = b.WriteTo([]byte("hi"), a.LocalAddr())
	require.ErrorIs(t, err, net.ErrClosed, "closed")
}
