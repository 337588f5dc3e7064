//go:build linux

package udpbind

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
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
