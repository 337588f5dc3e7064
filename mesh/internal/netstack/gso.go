package netstack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// maxHdrLen bounds IP + TCP headers of a GSO packet (IPv6 40 + TCP 60).
const maxHdrLen = 128

// splitter cuts one TCP GSO packet (headers + up to 64 KiB payload, TCP
// checksum partial) into MSS-sized packets with full checksums, possibly
// across several Read calls.
type splitter struct {
	pkt     *stack.PacketBuffer // packet in progress; nil when none
	hdr     [maxHdrLen]byte
	hdrLen  int // IP + TCP header length
	ipLen   int // IP header length
	payload int // total payload bytes
	done    int // payload bytes emitted so far
	seg     int // segments emitted so far
	cur     viewCursor

	// separateSum (benchmarks only) copies the payload and then sums it
	// in a second pass, as before copySum; kept to measure the lever.
	separateSum bool
}

func (s *splitter) reset() { *s = splitter{separateSum: s.separateSum} }

// next writes segments of pkt into bufs (at offset) and records their sizes.
// It returns how many it wrote and whether pkt is finished. A malformed
// packet is dropped (finished, zero segments).
func (s *splitter) next(pkt *stack.PacketBuffer, bufs [][]byte, sizes []int, offset int) (int, bool) {
	if s.pkt != pkt {
		s.reset()
		ipLen := len(pkt.NetworkHeader().Slice())
		hdrLen := ipLen + len(pkt.TransportHeader().Slice())
		total := pkt.Size()
		if ipLen == 0 || hdrLen > maxHdrLen || hdrLen-ipLen < header.TCPMinimumSize || total < hdrLen {
			return 0, true
		}
		s.pkt, s.ipLen, s.hdrLen, s.payload = pkt, ipLen, hdrLen, total-hdrLen
		s.cur.init(pkt)
		s.cur.read(s.hdr[:hdrLen])
	}
	mss := int(pkt.GSOOptions.MSS)
	if mss <= 0 {
		mss = s.payload
	}
	n := 0
	for n < len(bufs) {
		seg := min(mss, s.payload-s.done)
		out := bufs[n][offset:]
		if s.hdrLen+seg > len(out) {
			s.reset()
			return n, true // cannot fit: drop the rest
		}
		out = out[:s.hdrLen+seg]
		copy(out, s.hdr[:s.hdrLen])
		var paySum uint16
		if s.separateSum {
			s.cur.read(out[s.hdrLen:])
		} else {
			paySum = s.cur.readSum(out[s.hdrLen:])
		}
		last := s.done+seg == s.payload
		s.fixHeaders(out, seg, last, paySum)
		sizes[n] = len(out)
		n++
		s.done += seg
		s.seg++
		if last {
			s.reset()
			return n, true
		}
	}
	return n, false
}

// fixHeaders rewrites lengths, IPv4 ID, TCP sequence number and flags and
// computes both checksums for one segment carrying seg payload bytes, whose
// checksum the copy computed (paySum; unused with separateSum).
func (s *splitter) fixHeaders(out []byte, seg int, last bool, paySum uint16) {
	tcpHdr := header.TCP(out[s.ipLen:])
	var pseudo uint16
	tcpLen := len(out) - s.ipLen
	if out[0]>>4 == 4 {
		ip := header.IPv4(out)
		ip.SetTotalLength(uint16(len(out)))
		ip.SetID(ip.ID() + uint16(s.seg))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		pseudo = checksum.Checksum(out[12:20], 0)
	} else {
		binary.BigEndian.PutUint16(out[4:6], uint16(tcpLen))
		pseudo = checksum.Checksum(out[8:40], 0)
	}
	pseudo = checksum.Combine(pseudo, uint16(header.TCPProtocolNumber))
	pseudo = checksum.Combine(pseudo, uint16(tcpLen))
	tcpHdr.SetSequenceNumber(tcpHdr.SequenceNumber() + uint32(s.done))
	if !last {
		tcpHdr.SetFlags(uint8(tcpHdr.Flags() &^ (header.TCPFlagFin | header.TCPFlagPsh)))
	}
	tcpHdr.SetChecksum(0)
	if s.separateSum {
		tcpHdr.SetChecksum(^checksum.Checksum(out[s.ipLen:], pseudo))
		return
	}
	// The TCP header's length is a multiple of 4, so the payload starts
	// at an even offset and its sum combines as is.
	tcpHdr.SetChecksum(^checksum.Combine(checksum.Checksum(out[s.ipLen:s.hdrLen], pseudo), paySum))
}

// viewCursor reads a packet's bytes sequentially without allocating.
type viewCursor struct {
	v   *buffer.View
	off int
}

func (c *viewCursor) init(pkt *stack.PacketBuffer) {
	vl, off := pkt.AsViewList()
	c.v, c.off = vl.Front(), off
	for c.v != nil && c.off >= c.v.Size() {
		c.off -= c.v.Size()
		c.v = c.v.Next()
	}
}

// readSum is read that also returns the checksum of the bytes it copied
// (computed during the copy, see copySum).
func (c *viewCursor) readSum(dst []byte) uint16 {
	var sum uint16
	odd := false
	for len(dst) > 0 && c.v != nil {
		k, s := copySum(dst, c.v.AsSlice()[c.off:])
		sum = checksum.Combine(sum, sumAt(s, odd))
		odd = odd != (k&1 == 1)
		dst = dst[k:]
		c.off += k
		if c.off == c.v.Size() {
			c.v, c.off = c.v.Next(), 0
		}
	}
	return sum
}

func (c *viewCursor) read(dst []byte) {
	for len(dst) > 0 && c.v != nil {
		s := c.v.AsSlice()[c.off:]
		k := copy(dst, s)
		dst = dst[k:]
		c.off += k
		if c.off == c.v.Size() {
			c.v, c.off = c.v.Next(), 0
		}
	}
}
