package udpbind

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseEndpoint(t *testing.T) {
	b := New(0)
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"127.0.0.1:51820", "127.0.0.1:51820", true},
		{"[::ffff:127.0.0.1]:1", "127.0.0.1:1", true},
		{"[::1]:7", "[::1]:7", true},
		{"127.0.0.1", "", false},
		{"host:1", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ep, err := b.ParseEndpoint(tt.in)
			if !tt.ok {
				require.Error(t, err)
				require.Contains(t, err.Error(), tt.in)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, ep.DstToString())
			ap := netip.MustParseAddrPort(tt.want)
			want, _ := ap.MarshalBinary()
			require.Equal(t, want, ep.DstToBytes())
		})
	}
}

// receiveAll starts collecting datagrams from all receive functions of a
// bind, one goroutine each (a ReceiveFunc is called from one goroutine
// only); wait returns the first want of them, ended waits for the
// goroutines to stop (after the bind's Close) and returns the error each
// receive function ended with.
func receiveAll(t *testing.T, fns []conn.ReceiveFunc, batch int) (wait func(want int) [][]byte, ended func() []error) {
	t.Helper()
	return receiveAllSized(t, fns, batch, 1<<16)
}

// receiveAllSized is receiveAll with buffers of bufSize bytes.
func receiveAllSized(t *testing.T, fns []conn.ReceiveFunc, batch, bufSize int) (wait func(want int) [][]byte, ended func() []error) {
	t.Helper()
	out := make(chan []byte, 1<<14)
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = make([]byte, bufSize)
			}
			sizes := make([]int, batch)
			eps := make([]conn.Endpoint, batch)
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					errs <- err
					return
				}
				for i := 0; i < n; i++ {
					if eps[i].DstIP().String() != "127.0.0.1" {
						errs <- fmt.Errorf("datagram from %s", eps[i].DstToString())
						return
					}
					out <- append([]byte(nil), bufs[i][:sizes[i]]...)
				}
			}
		}()
	}
	wait = func(want int) [][]byte {
		var got [][]byte
		deadline := time.After(10 * time.Second)
		for len(got) < want {
			select {
			case p := <-out:
				got = append(got, p)
			case err := <-errs:
				t.Fatalf("receive ended early: %v", err)
			case <-deadline:
				t.Fatalf("received %d of %d datagrams", len(got), want)
			}
		}
		return got
	}
	ended = func() []error {
		var all []error
		deadline := time.After(10 * time.Second)
		for range fns {
			select {
			case err := <-errs:
				all = append(all, err)
			case <-deadline:
				t.Fatal("receive functions still running 10s after Close")
			}
		}
		return all
	}
	return wait, ended
}

func TestSendReceive(t *testing.T) {
	for _, batch := range []int{1, 16, 128} {
		t.Run(fmt.Sprint(batch), func(t *testing.T) {
			a, _, _ := openBind(t, batch)
			b, fns, port := openBind(t, batch)
			_, _, err := b.Open(0)
			require.ErrorIs(t, err, ErrBindOpen)

			ep, err := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
			require.NoError(t, err)
			wait, ended := receiveAll(t, fns, batch)
			// Runs of equal sizes (coalesced), a short tail, then larger ones.
			var sent, got [][]byte
			for round := 0; round < 20; round++ {
				var bufs [][]byte
				for i := 0; i < batch; i++ {
					size := 1200
					if i == batch/2 {
						size = 700
					} else if i > batch/2 {
						size = 1300
					}
					p := make([]byte, size, 1<<16) // spare capacity like wireguard-go's buffers
					p[0], p[1], p[2] = byte(round), byte(i), byte(size>>8)
					bufs = append(bufs, p)
					sent = append(sent, bytes.Clone(p))
				}
				require.NoError(t, a.Send(bufs, ep))
				// Let the receiver keep up: the socket buffer is ~200 KiB.
				got = append(got, wait(len(bufs))...)
			}
			require.Equal(t, sent, got, "datagrams arrive intact and in order over loopback")
			require.NoError(t, b.Close())
			for _, err := range ended() {
				require.ErrorIs(t, err, net.ErrClosed)
			}
		})
	}
}

// TestBothFamilies: one bind receives from and sends to IPv4 and IPv6 peers
// (on Linux through one dual-stack socket, so one receive function).
func TestBothFamilies(t *testing.T) {
	a, fnsA, portA := openBind(t, 4)
	b, fnsB, portB := openBind(t, 4)
	if a.v6 == nil {
		t.Skip("no IPv6 on this host")
	}
	if dualStack {
		require.Len(t, fnsA, 1, "one dual-stack socket")
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			epB, err := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr(host), portB).String())
			require.NoError(t, err)
			require.NoError(t, a.Send([][]byte{[]byte("ping " + host)}, epB))
			from, got := receiveOne(t, fnsB)
			require.Equal(t, "ping "+host, string(got))
			require.Equal(t, netip.AddrPortFrom(netip.MustParseAddr(host), portA).String(), from.DstToString())
			require.NoError(t, b.Send([][]byte{[]byte("pong")}, from))
			_, got = receiveOne(t, fnsA)
			require.Equal(t, "pong", string(got))
		})
	}
}

// receiveOne returns the first datagram any of fns receives.
func receiveOne(t *testing.T, fns []conn.ReceiveFunc) (conn.Endpoint, []byte) {
	t.Helper()
	type dgram struct {
		ep conn.Endpoint
		b  []byte
	}
	got := make(chan dgram, len(fns))
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs, sizes, eps := [][]byte{make([]byte, 1<<16)}, []int{0}, []conn.Endpoint{nil}
			n, err := fn(bufs, sizes, eps)
			if err == nil && n == 1 {
				got <- dgram{eps[0], bufs[0][:sizes[0]]}
			}
		}()
	}
	select {
	case d := <-got:
		if len(fns) > 1 {
			t.Cleanup(wg.Wait) // the other family's reader ends with Close
		} else {
			wg.Wait()
		}
		return d.ep, d.b
	case <-time.After(10 * time.Second):
		t.Fatal("no datagram within 10s")
		return nil, nil
	}
}

// TestOversizeDropped: a datagram larger than the buffer it would go to is
// dropped, not delivered cut (wireguard-go's buffers may be sized for the
// tunnel MTU), with UDP GRO on and off, and the datagrams around it arrive.
func TestOversizeDropped(t *testing.T) {
	for _, gro := range []bool{true, false} {
		t.Run(fmt.Sprintf("gro=%v", gro), func(t *testing.T) {
			a, _, _ := openBind(t, 8)
			b, fns, port := openBind(t, 8)
			if !gro {
				b.v4.rxOffload = false // before the first receive
			}
			ep, err := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
			require.NoError(t, err)
			const bufSize = 1500
			wait, ended := receiveAllSized(t, fns, 8, bufSize)
			var sent [][]byte
			for i, size := range []int{1200, 1200, 1501, 1501, 1200, 1500, 9000, 700} {
				p := make([]byte, size)
				p[0], p[1] = byte(i), byte(size>>8)
				require.NoError(t, a.Send([][]byte{p}, ep))
				if size <= bufSize {
					sent = append(sent, p)
				}
			}
			got := wait(len(sent))
			require.Equal(t, sent, got, "the datagrams that fit, whole and in order, and nothing cut")
			require.NoError(t, b.Close())
			for _, err := range ended() {
				require.ErrorIs(t, err, net.ErrClosed)
			}
		})
	}
}

// openBind opens a Bind of the batch on a random port, closed when the
// test ends (Close may also be called before).
func openBind(t *testing.T, batch int) (*Bind, []conn.ReceiveFunc, uint16) {
	t.Helper()
	b := New(batch)
	fns, port, err := b.Open(0)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return b, fns, port
}
