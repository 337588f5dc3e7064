package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// requireDeadlineExceeded: err is what a net.Conn of the net package
// returns at its deadline: it wraps os.ErrDeadlineExceeded, says "i/o
// timeout" and is a net.Error with Timeout true.
func requireDeadlineExceeded(t *testing.T, err error) {
	t.Helper()
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.ErrorContains(t, err, "i/o timeout")
	var ne net.Error
	require.ErrorAs(t, err, &ne)
	require.True(t, ne.Timeout())
	var oe *net.OpError
	require.ErrorAs(t, err, &oe)
}

// TestTCPDeadlineExceeded: reads and writes of a dialed and of an accepted
// TCP connection fail at their deadline with an error wrapping
// os.ErrDeadlineExceeded (gonet's own timeout error does not).
func TestTCPDeadlineExceeded(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	go drainLoop(n) // moves the packets to our own address back in
	ap := netip.AddrPortFrom(testAddrA, 7001)
	ln, err := n.ListenTCPAddrPort(ap)
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialed, err := n.DialContextTCPAddrPort(ctx, ap)
	require.NoError(t, err)
	defer dialed.Close()
	acc, ok := <-accepted
	require.True(t, ok, "accept")
	defer acc.Close()
	_, ok = acc.(interface{ CloseWrite() error })
	require.True(t, ok, "the accepted conn keeps CloseWrite")

	for _, tc := range []struct {
		name string
		c    net.Conn
	}{{"dialed", dialed}, {"accepted", acc}} {
		t.Run(tc.name, func(t *testing.T) {
			// Nothing is sent: a read waits, and ends at the deadline.
			require.NoError(t, tc.c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
			_, err := tc.c.Read(make([]byte, 16))
			requireDeadlineExceeded(t, err)
			var oe *net.OpError
			require.True(t, errors.As(err, &oe))
			require.Equal(t, "read", oe.Op)
			require.Equal(t, "tcp", oe.Net)
			require.NotNil(t, oe.Source)
			require.NotNil(t, oe.Addr)

			require.NoError(t, tc.c.SetWriteDeadline(time.Now().Add(-time.Second)))
			_, err = tc.c.Write([]byte("late"))
			requireDeadlineExceeded(t, err)
			require.True(t, errors.As(err, &oe))
			require.Equal(t, "write", oe.Op)

			// Cleared, the connection works again.
			require.NoError(t, tc.c.SetDeadline(time.Time{}))
		})
	}
	_, err = dialed.Write([]byte("x"))
	require.NoError(t, err)
	require.NoError(t, acc.SetReadDeadline(time.Now().Add(5*time.Second)))
	b := make([]byte, 1)
	_, err = acc.Read(b)
	require.NoError(t, err)
	require.Equal(t, "x", string(b))
}

// TestUDPReadDeadlineExceeded: Read and ReadFrom of a UDP socket fail at
// the read deadline with an error wrapping os.ErrDeadlineExceeded.
func TestUDPReadDeadlineExceeded(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	c, err := n.ListenUDPAddrPort(netip.AddrPortFrom(testAddrA, 7002))
	require.NoError(t, err)
	defer c.Close()

	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, addr, err := c.ReadFrom(make([]byte, 16))
	requireDeadlineExceeded(t, err)
	require.Nil(t, addr)
	var oe *net.OpError
	require.True(t, errors.As(err, &oe))
	require.Equal(t, "read", oe.Op)
	require.Equal(t, "udp", oe.Net)

	require.NoError(t, c.SetDeadline(time.Now().Add(-time.Second)))
	_, err = c.Read(make([]byte, 16))
	requireDeadlineExceeded(t, err)
}

// TestPingReadDeadline: a ping socket's read deadline (the deadline type it
// shares with UDPConn's writes) ends a read when it passes, when it is
// moved closer while the read waits, and at once when it is in the past;
// a cleared deadline lets the read wait until Close.
func TestPingReadDeadline(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	c, err := n.DialPingAddr(netip.Addr{}, testAddrB) // nobody answers
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, 64)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err = c.Read(buf)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Hour)))
	done := make(chan error, 1)
	go func() { _, err := c.Read(buf); done <- err }()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	select {
	case err := <-done:
		require.ErrorIs(t, err, os.ErrDeadlineExceeded, "moved closer while waiting")
	case <-time.After(10 * time.Second):
		t.Fatal("the read did not end at the moved deadline")
	}

	require.NoError(t, c.SetReadDeadline(time.Now().Add(-time.Second)))
	_, err = c.Read(buf)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "in the past")

	require.NoError(t, c.SetReadDeadline(time.Time{}))
	go func() { _, err := c.Read(buf); done <- err }()
	select {
	case err := <-done:
		t.Fatalf("a read without deadline ended: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, c.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the read")
	}
}
