package netstack

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no addresses", Config{}},
		{"invalid address", Config{Addrs: []netip.Addr{{}}}},
		{"unspecified", Config{Addrs: []netip.Addr{netip.IPv4Unspecified()}}},
		{"duplicate", Config{Addrs: []netip.Addr{testAddrA, testAddrA}}},
		{"mtu too small", Config{Addrs: []netip.Addr{testAddrA}, MTU: 500}},
		{"batch too big", Config{Addrs: []netip.Addr{testAddrA}, BatchSize: 5000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := New(tt.cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.Nil(t, n)
		})
	}
}

// TestMessageBufferSize: a sealed packet of the MTU (header, padding to 16,
// tag) fits, and never less than 2 KiB.
func TestMessageBufferSize(t *testing.T) {
	for _, tc := range []struct{ mtu, want int }{{0, 2048}, {1280, 2048}, {1420, 2048}, {2001, 2048}, {2002, 2112}, {9000, 9088}, {65488, 65535}, {65535, 65535}} {
		n, err := New(Config{Addrs: []netip.Addr{testAddrA}, MTU: tc.mtu})
		require.NoError(t, err)
		got := n.MessageBufferSize()
		n.Close()
		require.Equal(t, tc.want, got, "MTU %d", tc.mtu)
		mtu := tc.mtu
		if mtu == 0 {
			mtu = DefaultMTU
		}
		if mtu <= 65488 { // above, no UDP datagram holds a sealed packet of the MTU
			require.GreaterOrEqual(t, got, 16+(mtu+15)&^15+16, "MTU %d: a padded, sealed packet fits", tc.mtu)
		}
	}
}

func TestDialContextErrors(t *testing.T) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	defer n.Close()
	tests := []struct {
		name, network, address string
		want                   error
	}{
		{"unknown network", "sctp", "10.0.0.1:1", nil},
		{"hostname", "tcp", "example.com:80", ErrNotIPLiteral},
		{"bad port", "tcp", "10.0.0.1:http", nil},
		{"family mismatch", "tcp6", "10.0.0.1:80", nil},
		{"missing port", "udp", "10.0.0.1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := n.DialContext(context.Background(), tt.network, tt.address)
			require.Error(t, err)
			require.Nil(t, c)
			var op *net.OpError
			require.ErrorAs(t, err, &op)
			if tt.want != nil {
				require.ErrorIs(t, err, tt.want)
			}
		})
	}
}

// stream sends size random bytes from src to dst and checks the SHA-256.
func streamCheck(t *testing.T, w io.WriteCloser, r io.Reader, size int) {
	t.Helper()
	var wg sync.WaitGroup
	var sent [32]byte
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		h := sha256.New()
		_, werr = io.CopyN(io.MultiWriter(w, h), rand.Reader, int64(size))
		copy(sent[:], h.Sum(nil))
		w.Close()
	}()
	h := sha256.New()
	n, err := io.Copy(h, r)
	wg.Wait()
	require.NoError(t, werr)
	require.NoError(t, err)
	require.EqualValues(t, size, n)
	require.Equal(t, sent[:], h.Sum(nil))
}

func TestTCPBothWays(t *testing.T) {
	binds := []struct {
		name string
		bind func() conn.Bind
	}{
		{"udpbind", nil},
		{"stdbind", conn.NewDefaultBind},
	}
	for _, bd := range binds {
		t.Run(bd.name, func(t *testing.T) { testTCPBothWays(t, bd.bind) })
	}
}

func testTCPBothWays(t *testing.T, bind func() conn.Bind) {
	p := newPair(t, Config{}, bind)
	defer p.close()
	const size = 4 << 20
	for _, tc := range []struct {
		name     string
		from, to *Net
		dst      netip.Addr
	}{
		{"A to B v4", p.a, p.b, testAddrB},
		{"B to A v4", p.b, p.a, testAddrA},
		{"A to B v6", p.a, p.b, testAddr6B},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tc.to.ListenTCPAddrPort(netip.AddrPortFrom(tc.dst, 8080))
			require.NoError(t, err)
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				c, err := ln.Accept()
				if err == nil {
					accepted <- c
				}
				close(accepted)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := tc.from.DialContext(ctx, "tcp", netip.AddrPortFrom(tc.dst, 8080).String())
			require.NoError(t, err)
			defer c.Close()
			s, ok := <-accepted
			require.True(t, ok)
			defer s.Close()
			require.NoError(t, c.SetDeadline(time.Now().Add(60*time.Second)))
			require.NoError(t, s.SetDeadline(time.Now().Add(60*time.Second)))
			// Both directions at once: client→server and server→client.
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				streamCheck(t, halfCloser{c}, s, size)
			}()
			streamCheck(t, halfCloser{s}, c, size)
			wg.Wait()
		})
	}
}

// halfCloser closes only the write side, so the other direction continues.
type halfCloser struct{ net.Conn }

func (h halfCloser) Close() error { return h.Conn.(interface{ CloseWrite() error }).CloseWrite() }

func TestUDP(t *testing.T) {
	p := newPair(t, Config{}, nil)
	defer p.close()
	srv, err := p.b.ListenUDPAddrPort(netip.AddrPortFrom(testAddrB, 5353))
	require.NoError(t, err)
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			srv.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	c, err := p.a.DialContext(context.Background(), "udp4", "10.77.0.2:5353")
	require.NoError(t, err)
	defer c.Close()
	pollUDP(t, c, []byte("hello"), "echo:hello")
	require.Equal(t, netip.AddrPortFrom(testAddrB, 5353).String(), c.RemoteAddr().String())
}

// pollUDP sends msg until a reply arrives (the first datagrams may race the
// WireGuard handshake), with an overall deadline.
func pollUDP(t *testing.T, c net.Conn, msg []byte, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		_, err := c.Write(msg)
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(300*time.Millisecond)))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) == want {
				return
			}
			continue // a late reply to an earlier retry
		}
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.True(t, ne.Timeout(), "want timeout, got %v", err)
	}
	t.Fatalf("no UDP reply %q before deadline", want)
}

// echoRequest builds an ICMP echo request (v4 type 8 / v6 type 128).
func echoRequest(v6 bool, seq uint16, payload string) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8
	if v6 {
		b[0] = 128
	}
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	return b
}

// ping sends echo requests until a reply arrives or wait passes; it returns
// whether one did.
func ping(t *testing.T, n *Net, dst netip.Addr, wait time.Duration) bool {
	t.Helper()
	c, err := n.DialPingAddr(netip.Addr{}, dst)
	require.NoError(t, err)
	defer c.Close()
	deadline := time.Now().Add(wait)
	buf := make([]byte, 1500)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		_, err := c.Write(echoRequest(dst.Is6(), seq, "wiremesh"))
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
		k, from, err := c.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		require.NoError(t, err)
		require.Equal(t, dst, from.(*PingAddr).Addr())
		reply := byte(0)
		if dst.Is6() {
			reply = 129
		}
		require.Equal(t, reply, buf[0], "ICMP type")
		require.Equal(t, "wiremesh", string(buf[8:k]))
		return true
	}
	return false
}

func TestPing(t *testing.T) {
	p := newPair(t, Config{}, nil)
	defer p.close()
	require.True(t, ping(t, p.a, testAddrB, 15*time.Second))
	require.True(t, ping(t, p.a, testAddr6B, 15*time.Second))

	c, err := p.a.DialContext(context.Background(), "ping4", testAddrB.String())
	require.NoError(t, err)
	require.NoError(t, c.Close())
	_, err = c.Read(make([]byte, 10))
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestDialSelf checks that traffic to the member's own address stays inside
// the stack (HandleLocal is off; the link endpoint loops it back).
func TestDialSelf(t *testing.T) {
	p := newPair(t, Config{}, nil)
	defer p.close()
	ln, err := p.a.ListenTCPAddrPort(netip.AddrPortFrom(testAddrA, 7))
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp4", "10.77.0.1:7")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	msg := make([]byte, 256<<10) // several GSO segments
	_, err = rand.Read(msg)
	require.NoError(t, err)
	go c.Write(msg)
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	require.NoError(t, err)
	require.Equal(t, msg, got)
	require.True(t, ping(t, p.a, testAddr6A, 5*time.Second))
}

var childPrefix = netip.MustParsePrefix("10.99.0.0/24")

func TestForwardTCP(t *testing.T) {
	// A routes all of 10.99.0.0/16 to B, but B forwards only childPrefix.
	p := newPair(t, Config{}, nil, netip.MustParsePrefix("10.99.0.0/16"))
	defer p.close()
	var seen sync.Map // netip.AddrPort → true
	require.NoError(t, p.b.SetForwarding(Forwarding{
		Match: childPrefix.Contains,
		TCP: func(req *TCPRequest) {
			seen.Store(req.Dst, true)
			if req.Dst.Port() == 81 { // "host unreachable": refuse before accepting
				req.Reject()
				return
			}
			c, err := req.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, err = req.Accept()
			if !errors.Is(err, ErrRequestDone) {
				return
			}
			fmt.Fprintf(c, "%s from %s\n", req.Dst, req.Src.Addr())
			io.Copy(c, c)
		},
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", "10.99.0.7:1234")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "10.99.0.7:1234 from 10.77.0.1\n", line)
	require.Equal(t, "10.99.0.7:1234", c.RemoteAddr().String())
	_, err = c.Write([]byte("ping-pong"))
	require.NoError(t, err)
	got := make([]byte, 9)
	_, err = io.ReadFull(br, got)
	require.NoError(t, err)
	require.Equal(t, "ping-pong", string(got))

	_, err = p.a.DialContext(ctx, "tcp", "10.99.0.7:81")
	require.Error(t, err, "rejected request must refuse the connection")
	require.Contains(t, err.Error(), "refused")

	// Not matched: dropped silently, the handler never sees it.
	short, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	_, err = p.a.DialContext(short, "tcp", "10.99.1.5:1234")
	require.Error(t, err)
	_, ok := seen.Load(netip.MustParseAddrPort("10.99.1.5:1234"))
	require.False(t, ok)
}

func TestForwardUDP(t *testing.T) {
	p := newPair(t, Config{}, nil, childPrefix)
	defer p.close()
	require.NoError(t, p.b.SetForwarding(Forwarding{
		Match: childPrefix.Contains,
		UDP: func(c *UDPConn, src, dst netip.AddrPort) {
			defer c.Close()
			buf := make([]byte, 2048)
			for {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "%s->%s:%s", src.Addr(), dst, buf[:n])
			}
		},
	}))
	c, err := p.a.DialContext(context.Background(), "udp", "10.99.0.9:53")
	require.NoError(t, err)
	defer c.Close()
	pollUDP(t, c, []byte("q1"), "10.77.0.1->10.99.0.9:53:q1")
	pollUDP(t, c, []byte("q2"), "10.77.0.1->10.99.0.9:53:q2")
}

func TestForwardPing(t *testing.T) {
	p := newPair(t, Config{}, nil, childPrefix)
	defer p.close()
	reachable := netip.MustParseAddr("10.99.0.7")
	var mu sync.Mutex
	asked := map[netip.Addr]int{}
	require.NoError(t, p.b.SetForwarding(Forwarding{
		Match: childPrefix.Contains,
		Ping: func(ctx context.Context, dst netip.Addr) bool {
			mu.Lock()
			asked[dst]++
			mu.Unlock()
			return dst == reachable
		},
	}))
	require.True(t, ping(t, p.a, reachable, 15*time.Second))
	unreachable := netip.MustParseAddr("10.99.0.8")
	require.False(t, ping(t, p.a, unreachable, time.Second))
	mu.Lock()
	require.Positive(t, asked[unreachable], "hook consulted for the unreachable address")
	mu.Unlock()

	// Forwarding off again: the child address no longer answers.
	require.NoError(t, p.b.SetForwarding(Forwarding{}))
	require.False(t, ping(t, p.a, reachable, time.Second))
}

func TestCloseIdempotentNoLeak(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := newPair(t, Config{}, nil, childPrefix)
	defer p.close() // on failure; Close is idempotent
	require.NoError(t, p.b.SetForwarding(Forwarding{
		Match: childPrefix.Contains,
		TCP: func(req *TCPRequest) {
			c, err := req.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c) // blocks until Close fails the conn
			c.Close()
		},
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := p.a.DialContext(ctx, "tcp", "10.99.0.7:22")
	require.NoError(t, err)
	_, err = c.Write([]byte("held open"))
	require.NoError(t, err)
	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 99))
	require.NoError(t, err)
	p.close()
	require.NoError(t, p.a.Close())
	require.NoError(t, p.b.Close())
	_, err = ln.Accept()
	require.Error(t, err)
	require.Error(t, p.b.SetForwarding(Forwarding{Match: childPrefix.Contains}))
	_, err = p.a.Read([][]byte{make([]byte, 1500)}, []int{0}, 0)
	require.ErrorIs(t, err, os.ErrClosed)
	c.Close()
}
