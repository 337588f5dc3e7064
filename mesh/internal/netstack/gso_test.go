package netstack

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestCopySum(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 4200)
	for i := range src {
		src[i] = byte(rng.Uint32())
	}
	for _, fill := range []byte{0x00, 0xff} { // the two one's complement zeros
		b := bytes.Repeat([]byte{fill}, 100)
		_, s := copySum(make([]byte, 100), b)
		require.Equal(t, checksum.Checksum(b, 0), s)
	}
	for i := 0; i < 2000; i++ {
		so, do := rng.IntN(8), rng.IntN(8) // unaligned source and destination
		n := rng.IntN(len(src) - 8)
		dn := n
		if i%5 == 0 {
			dn = rng.IntN(n + 1) // destination shorter than the source
		}
		dst := make([]byte, dn+do)
		k, s := copySum(dst[do:], src[so:so+n])
		require.Equal(t, dn, k)
		require.Equal(t, src[so:so+dn], dst[do:])
		require.Equal(t, checksum.Checksum(src[so:so+dn], 0), s, "length %d", dn)
	}
}

func FuzzCopySum(f *testing.F) {
	f.Add([]byte{}, 0)
	f.Add([]byte{1}, 0)
	f.Add([]byte{0xff, 0xff, 0xff}, 1)
	f.Add(bytes.Repeat([]byte{0xfe, 0x01, 0x80}, 50), 3)
	f.Fuzz(func(t *testing.T, src []byte, short int) {
		dn := len(src)
		if short > 0 && short < dn {
			dn -= short
		}
		dst := make([]byte, dn)
		k, s := copySum(dst, src)
		if k != dn || !bytes.Equal(dst, src[:dn]) {
			t.Fatalf("copied %d bytes, want %d", k, dn)
		}
		if want := checksum.Checksum(src[:dn], 0); s != want {
			t.Fatalf("sum %#04x, want %#04x", s, want)
		}
	})
}

// gsoPacket builds a TCP GSO packet (IPv4 or IPv6) whose bytes lie in
// several views cut at the given sizes, as the stack hands them to
// WritePackets (headers and payload need not be in one view).
func gsoPacket(t testing.TB, v6 bool, payload []byte, mss uint16, cuts []int) *stack.PacketBuffer {
	tcpLen := header.TCPMinimumSize + 12 // with options (timestamps)
	var ipLen int
	var hdr []byte
	if v6 {
		ipLen = header.IPv6MinimumSize
		hdr = make([]byte, ipLen+tcpLen)
		header.IPv6(hdr).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(tcpLen + len(payload)),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16([16]byte{0xfd, 1: 1, 15: 1}),
			DstAddr:           tcpip.AddrFrom16([16]byte{0xfd, 1: 1, 15: 2}),
		})
	} else {
		ipLen = header.IPv4MinimumSize
		hdr = make([]byte, ipLen+tcpLen)
		header.IPv4(hdr).Encode(&header.IPv4Fields{
			TotalLength: uint16(ipLen + tcpLen + len(payload)),
			ID:          77,
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4([4]byte{10, 0, 0, 1}),
			DstAddr:     tcpip.AddrFrom4([4]byte{10, 0, 0, 2}),
		})
	}
	header.TCP(hdr[ipLen:]).Encode(&header.TCPFields{
		SrcPort:    1234,
		DstPort:    80,
		SeqNum:     0xfffff000, // wraps within the packet
		AckNum:     42,
		DataOffset: uint8(tcpLen),
		Flags:      header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin,
		WindowSize: 1000,
	})
	all := append(hdr, payload...)
	var buf buffer.Buffer
	for _, c := range cuts {
		if c > len(all) {
			break
		}
		require.NoError(t, buf.Append(buffer.NewViewWithData(all[:c])))
		all = all[c:]
	}
	if len(all) > 0 {
		require.NoError(t, buf.Append(buffer.NewViewWithData(all)))
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	_, ok := pkt.NetworkHeader().Consume(ipLen)
	require.True(t, ok)
	_, ok = pkt.TransportHeader().Consume(tcpLen)
	require.True(t, ok)
	pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, MSS: mss, L3HdrLen: uint16(ipLen)}
	if v6 {
		pkt.GSOOptions.Type = stack.GSOTCPv6
	}
	return pkt
}

// split runs a splitter over pkt with room for a few segments per call, as
// tun Read does with its batch, and returns the segments.
func split(t testing.TB, pkt *stack.PacketBuffer, separateSum bool) [][]byte {
	s := splitter{separateSum: separateSum}
	var out [][]byte
	for calls := 0; ; calls++ {
		require.Less(t, calls, 1000)
		bufs := make([][]byte, 3)
		for i := range bufs {
			bufs[i] = make([]byte, 4+DefaultMTU+maxHdrLen)
		}
		sizes := make([]int, len(bufs))
		n, done := s.next(pkt, bufs, sizes, 4)
		for i := range n {
			out = append(out, bufs[i][4:4+sizes[i]])
		}
		if done {
			return out
		}
	}
}

// TestSplitterChecksum checks that the segments cut with the checksum
// computed while copying (copySum) are byte for byte those of the two-pass
// reference, that their checksums verify, and that they carry the payload.
func TestSplitterChecksum(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 300; i++ {
		v6 := i%2 == 1
		payload := make([]byte, rng.IntN(20000))
		for j := range payload {
			payload[j] = byte(rng.Uint32())
		}
		mss := uint16(1 + rng.IntN(1400))
		if i%3 == 0 {
			mss = 1368
		}
		var cuts []int
		for range rng.IntN(6) {
			cuts = append(cuts, 1+rng.IntN(3000)) // odd and even view sizes
		}
		ref := split(t, gsoPacket(t, v6, payload, mss, cuts), true)
		got := split(t, gsoPacket(t, v6, payload, mss, cuts), false)
		require.Equal(t, ref, got, "packet %d", i)

		var carried []byte
		for k, seg := range got {
			var tcpHdr header.TCP
			var src, dst tcpip.Address
			if v6 {
				ip := header.IPv6(seg)
				require.Equal(t, len(seg)-header.IPv6MinimumSize, int(ip.PayloadLength()))
				tcpHdr, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
			} else {
				ip := header.IPv4(seg)
				require.True(t, ip.IsChecksumValid())
				require.Equal(t, len(seg), int(ip.TotalLength()))
				require.Equal(t, uint16(77+k), ip.ID())
				tcpHdr, src, dst = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
			}
			pay := tcpHdr.Payload()
			require.True(t, tcpHdr.IsChecksumValid(src, dst, checksum.Checksum(pay, 0), uint16(len(pay))), "packet %d segment %d", i, k)
			require.Equal(t, uint32(0xfffff000)+uint32(len(carried)), tcpHdr.SequenceNumber())
			carried = append(carried, pay...)
		}
		require.Equal(t, payload, carried)
	}
}

// BenchmarkSplitter cuts a 64 KiB GSO packet into MSS-sized segments with
// the checksum computed while copying and, for comparison, in a second pass.
//
//	go test -run '^$' -bench BenchmarkSplitter -count 5 ./mesh/internal/netstack/
func BenchmarkSplitter(b *testing.B) {
	payload := make([]byte, 65000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, c := range []struct {
		name    string
		twoPass bool
	}{{"copysum", false}, {"twopass", true}} {
		b.Run(c.name, func(b *testing.B) {
			bufs := make([][]byte, 16)
			for i := range bufs {
				bufs[i] = make([]byte, DefaultMTU+maxHdrLen)
			}
			sizes := make([]int, len(bufs))
			pkt := gsoPacket(b, false, payload, 1368, []int{52, 30000})
			defer pkt.DecRef()
			b.SetBytes(int64(len(payload)))
			for b.Loop() {
				s := splitter{separateSum: c.twoPass}
				for {
					if _, done := s.next(pkt, bufs, sizes, 0); done {
						break
					}
				}
			}
		})
	}
}
