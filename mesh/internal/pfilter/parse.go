package pfilter

import (
	"encoding/binary"
	"net/netip"
)

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	tcpSYN = 0x02
	tcpACK = 0x10
)

// header is what the filter reads from a packet.
type header struct {
	src, dst     netip.Addr
	proto        uint8
	l4ok         bool // the transport header is present (not a later fragment, not truncated)
	sport, dport uint16
	tcpFlags     uint8
	icmpType     uint8
}

// parse reads the IP and transport headers of p; false when p is not a
// well-formed IPv4 or IPv6 packet.
func parse(p []byte) (header, bool) {
	var h header
	if len(p) < 1 {
		return h, false
	}
	var l4 int
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return h, false
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || len(p) < ihl {
			return h, false
		}
		h.src = netip.AddrFrom4([4]byte(p[12:16]))
		h.dst = netip.AddrFrom4([4]byte(p[16:20]))
		h.proto = p[9]
		if binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 {
			return h, true // a later fragment
		}
		l4 = ihl
	case 6:
		if len(p) < 40 {
			return h, false
		}
		h.src = netip.AddrFrom16([16]byte(p[8:24]))
		h.dst = netip.AddrFrom16([16]byte(p[24:40]))
		var ok bool
		if h.proto, l4, ok = skipExtensions(p, p[6], 40); !ok {
			return h, true
		}
	default:
		return h, false
	}
	t := p[l4:]
	switch h.proto {
	case protoTCP:
		if len(t) < 14 {
			return h, true
		}
		h.sport, h.dport = binary.BigEndian.Uint16(t), binary.BigEndian.Uint16(t[2:])
		h.tcpFlags = t[13]
	case protoUDP:
		if len(t) < 8 {
			return h, true
		}
		h.sport, h.dport = binary.BigEndian.Uint16(t), binary.BigEndian.Uint16(t[2:])
	case protoICMP, protoICMPv6:
		if len(t) < 1 {
			return h, true
		}
		h.icmpType = t[0]
	}
	h.l4ok = true
	return h, true
}

// skipExtensions follows IPv6 extension headers from off (next is the
// first one's type) and returns the upper-layer protocol and its offset;
// false for a later fragment or a truncated chain.
func skipExtensions(p []byte, next uint8, off int) (uint8, int, bool) {
	for i := 0; i < 8; i++ {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(p) < off+8 {
				return next, off, false
			}
			next, off = p[off], off+8+int(p[off+1])*8
		case 44: // fragment
			if len(p) < off+8 {
				return next, off, false
			}
			if binary.BigEndian.Uint16(p[off+2:off+4])&0xfff8 != 0 {
				return p[off], off, false // a later fragment
			}
			next, off = p[off], off+8
		default:
			return next, off, off <= len(p)
		}
	}
	return next, off, false
}
