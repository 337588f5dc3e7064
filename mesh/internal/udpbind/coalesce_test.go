//go:build linux

package udpbind

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

func TestCoalesce(t *testing.T) {
	ep := newEndpoint(netip.MustParseAddrPort("127.0.0.1:1"))
	tests := []struct {
		name  string
		sizes []int
		want  [][2]int // per message: total bytes, segment size (0 = no UDP_SEGMENT)
	}{
		{"single", []int{100}, [][2]int{{100, 0}}},
		{"equal run", []int{100, 100, 100}, [][2]int{{300, 100}}},
		{"short tail ends run", []int{100, 100, 60, 100}, [][2]int{{260, 100}, {100, 0}}},
		{"larger starts new run", []int{100, 200, 200}, [][2]int{{100, 0}, {400, 200}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var bufs [][]byte
			for _, s := range tt.sizes {
				bufs = append(bufs, make([]byte, s, 1<<16))
			}
			msgs := make([]ipv6.Message, len(bufs))
			for i := range msgs {
				msgs[i].Buffers = make(net.Buffers, 0, len(bufs))
				msgs[i].OOB = make([]byte, 0, oobSize)
			}
			n := coalesce(bufs, ep, msgs)
			require.Len(t, tt.want, n)
			for i, w := range tt.want {
				total := 0
				for _, b := range msgs[i].Buffers {
					total += len(b)
				}
				require.Equal(t, w[0], total, "message %d bytes", i)
				seg := 0
				if len(msgs[i].OOB) > 0 {
					seg = segmentSizeOf(t, msgs[i].OOB)
				}
				require.Equal(t, w[1], seg, "message %d segment size", i)
			}
		})
	}
}

// segmentSizeOf parses the UDP_SEGMENT control message putSegmentSize wrote.
func segmentSizeOf(t *testing.T, oob []byte) int {
	t.Helper()
	hdr, data, _, err := unix.ParseOneSocketControlMessage(oob)
	require.NoError(t, err)
	require.EqualValues(t, unix.SOL_UDP, hdr.Level)
	require.EqualValues(t, unix.UDP_SEGMENT, hdr.Type)
	require.GreaterOrEqual(t, len(data), 2)
	return int(binary.NativeEndian.Uint16(data))
}

// TestCoalesceBelowGSOMax: a run of datagrams is split into messages that
// Linux passes on whole. The kernel segments a GSO packet in software when
// its length from the link-layer header (14 bytes on loopback and
// Ethernet) reaches gso_max_size, 65536 by default; 46 datagrams of 1424
// bytes (a batch of 48 full TCP segments through a member pair) were one
// message of 65504 bytes, cut by the kernel into 46 single reads.
func TestCoalesceBelowGSOMax(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		ep := newEndpoint(netip.AddrPortFrom(netip.MustParseAddr(host), 1))
		ipHeader := 20
		if ep.ap.Addr().Is6() {
			ipHeader = 40
		}
		for _, size := range []int{1424, 1452, 1000, 96} {
			t.Run(fmt.Sprintf("%s/%d", host, size), func(t *testing.T) {
				bufs := make([][]byte, 128)
				for i := range bufs {
					bufs[i] = make([]byte, size)
				}
				msgs := make([]ipv6.Message, len(bufs))
				for i := range msgs {
					msgs[i].Buffers = make(net.Buffers, 0, len(bufs))
					msgs[i].OOB = make([]byte, 0, oobSize)
				}
				n := coalesce(bufs, ep, msgs)
				count := 0
				for i := range n {
					total := 0
					for _, b := range msgs[i].Buffers {
						total += len(b)
					}
					count += len(msgs[i].Buffers)
					require.Less(t, 14+ipHeader+8+total, 1<<16, "message %d: %d datagrams, %d bytes", i, len(msgs[i].Buffers), total)
				}
				require.Equal(t, len(bufs), count)
				// Not needlessly small: 45 full-MTU datagrams still fit one message.
				require.GreaterOrEqual(t, len(msgs[0].Buffers), min(45, maxSegments, 65000/size))
			})
		}
	}
}

// TestGSOArrivesWhole: over loopback, each UDP_SEGMENT message of a full
// batch arrives in one GRO read (two here, 45 + 19 datagrams), not cut
// by the kernel into one read per datagram (46 + 1 + 17 before).
func TestGSOArrivesWhole(t *testing.T) {
	if b, err := os.ReadFile("/sys/class/net/lo/gso_max_size"); err != nil || strings.TrimSpace(string(b)) != "65536" {
		t.Skipf("loopback's gso_max_size is not the default 65536 (%q, %v): the test counts on it", b, err)
	}
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			const batch = 64
			a, _, _ := openBind(t, batch)
			b, fns, port := openBind(t, batch)
			s, fn := b.v4, fns[0]
			if host == "::1" {
				if b.v6 == nil {
					t.Skip("no IPv6 on this host")
				}
				s, fn = b.v6, fns[len(fns)-1]
			}
			ep := newEndpoint(netip.AddrPortFrom(netip.MustParseAddr(host), port))
			tx := a.v4
			if host == "::1" {
				tx = a.v6
			}
			if !tx.txOffload.Load() || !s.rxOffload {
				t.Skip("no UDP_SEGMENT or UDP_GRO")
			}
			bufs := make([][]byte, batch)
			for i := range bufs {
				bufs[i] = make([]byte, 1424) // 1420-byte MTU, MSS with timestamps, padded, sealed
				bufs[i][0] = byte(i)
			}
			require.NoError(t, a.Send(bufs, ep))
			require.NoError(t, s.conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			rb := make([][]byte, batch)
			for i := range rb {
				rb[i] = make([]byte, 2048)
			}
			sizes := make([]int, batch)
			eps := make([]conn.Endpoint, batch)
			reads, got := 0, 0
			for got < batch {
				k, err := fn(rb[:batch-got], sizes, eps)
				require.NoError(t, err)
				for i := range k {
					require.Equal(t, 1424, sizes[i])
					require.Equal(t, byte(got+i), rb[i][0], "in order")
				}
				reads++
				got += k
			}
			require.Equal(t, 2, reads, "receive calls for %d datagrams sent in one Send", batch)
		})
	}
}
