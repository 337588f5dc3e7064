package mesh

import (
	"net/netip"
	"testing"

	"github.com/wiremesh/wiremesh/control/api"
)

// BenchmarkActivityNote is the work the activity wrapper adds per packet
// in front of wireguard-go: batches of 16 IPv4 packets to one peer of a
// zone of 100 (the common case, a GSO-split segment), reported per packet.
func BenchmarkActivityNote(b *testing.B) {
	want := map[api.Key]wgPeer{}
	acts := map[api.Key]*peerAct{}
	var dst netip.Addr
	for i := 0; i < 100; i++ {
		var k api.Key
		k[0], k[1] = byte(i), 1
		a := netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)})
		want[k] = wgPeer{PublicKey: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(a, 32)}}
		acts[k] = &peerAct{key: k}
		dst = a
	}
	t := &activityTUN{wake: func(api.Key) {}}
	t.table.Store(newActTable(want, acts))
	const offset = 16
	bufs := make([][]byte, 16)
	sizes := make([]int, 16)
	for i := range bufs {
		bufs[i] = make([]byte, offset+1420)
		p := bufs[i][offset:]
		p[0] = 0x45
		copy(p[16:20], dst.AsSlice())
		sizes[i] = 1420
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t.note(bufs, sizes, offset, true)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(bufs)), "ns/packet")
}
