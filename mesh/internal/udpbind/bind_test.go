package udpbind

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
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
// bind; wait returns the first want of them.
func receiveAll(t *testing.T, fns []conn.ReceiveFunc, batch int) (wait func(want int) [][]byte) {
	t.Helper()
	out := make(chan []byte, 1<<14)
	for _, fn := range fns {
		go func() {
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = make([]byte, 1<<16)
			}
			sizes := make([]int, batch)
			eps := make([]conn.Endpoint, batch)
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				for i := 0; i < n; i++ {
					require.Equal(t, "127.0.0.1", eps[i].DstIP().String())
					out <- append([]byte(nil), bufs[i][:sizes[i]]...)
				}
			}
		}()
	}
	return func(want int) [][]byte {
		var got [][]byte
		deadline := time.After(10 * time.Second)
		for len(got) < want {
			select {
			case p := <-out:
				got = append(got, p)
			case <-deadline:
				t.Fatalf("received %d of %d datagrams", len(got), want)
			}
		}
		return got
	}
}

func TestSendReceive(t *testing.T) {
	for _, batch := range []int{1, 16, 128} {
		t.Run(fmt.Sprint(batch), func(t *testing.T) {
			a, b := New(batch), New(batch)
			_, _, err := a.Open(0)
			require.NoError(t, err)
			defer a.Close()
			fns, port, err := b.Open(0)
			require.NoError(t, err)
			defer b.Close()
			_, _, err = b.Open(0)
			require.ErrorIs(t, err, ErrBindOpen)

			ep, err := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", port))
			require.NoError(t, err)
			wait := receiveAll(t, fns, batch)
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
			_, err = fns[0]([][]byte{make([]byte, 10)}, []int{0}, []conn.Endpoint{nil})
			require.ErrorIs(t, err, net.ErrClosed)
		})
	}
}
