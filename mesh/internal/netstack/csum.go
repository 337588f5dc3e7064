package netstack

import (
	"encoding/binary"
	"math/bits"
)

// copySum copies src into dst (min of both lengths, like copy) and returns
// the count and the RFC 1071 checksum of the copied bytes, as
// checksum.Checksum(dst[:n], 0) would compute it: one pass over the bytes
// instead of a copy and then a checksum pass. The splitter uses it for the
// payload of every segment it cuts.
//
// It loads 8 bytes at a time in little-endian order and swaps the folded
// sum at the end (RFC 1071 1.2.B, byte order independence).
func copySum(dst, src []byte) (int, uint16) {
	n := min(len(dst), len(src))
	dst, src = dst[:n], src[:n]
	var acc, acc2, c, c2 uint64
	i := 0
	// Two accumulators, so that the two carry chains run in parallel.
	for ; i+32 <= n; i += 32 {
		s, d := (*[32]byte)(src[i:i+32]), (*[32]byte)(dst[i:i+32])
		w0 := binary.LittleEndian.Uint64(s[0:])
		w1 := binary.LittleEndian.Uint64(s[8:])
		w2 := binary.LittleEndian.Uint64(s[16:])
		w3 := binary.LittleEndian.Uint64(s[24:])
		binary.LittleEndian.PutUint64(d[0:], w0)
		binary.LittleEndian.PutUint64(d[8:], w1)
		binary.LittleEndian.PutUint64(d[16:], w2)
		binary.LittleEndian.PutUint64(d[24:], w3)
		acc, c = bits.Add64(acc, w0, 0)
		acc2, c2 = bits.Add64(acc2, w1, 0)
		acc, c = bits.Add64(acc, w2, c)
		acc2, c2 = bits.Add64(acc2, w3, c2)
		acc += c // cannot overflow: acc ≤ 2^64-2 after a carry out
		acc2 += c2
	}
	acc, c = bits.Add64(acc, acc2, 0)
	acc += c
	for ; i+8 <= n; i += 8 {
		w := binary.LittleEndian.Uint64(src[i:])
		binary.LittleEndian.PutUint64(dst[i:], w)
		acc, c = bits.Add64(acc, w, 0)
		acc += c
	}
	if i < n {
		var t [8]byte
		copy(t[:], src[i:])
		copy(dst[i:], t[:n-i])
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(t[:]), 0)
		acc += c
	}
	return n, bits.ReverseBytes16(fold(acc))
}

// fold reduces a 64-bit one's complement sum to 16 bits.
func fold(acc uint64) uint16 {
	acc = (acc >> 32) + (acc & 0xffff_ffff)
	acc = (acc >> 32) + (acc & 0xffff_ffff)
	acc = (acc >> 16) + (acc & 0xffff)
	acc = (acc >> 16) + (acc & 0xffff)
	return uint16(acc)
}

// sumAt returns a partial checksum s of a run of bytes that starts at an
// odd offset of the data being summed as if it started there: the bytes
// sit in the other half of each 16-bit word (RFC 1071 1.2.B).
func sumAt(s uint16, odd bool) uint16 {
	if odd {
		return bits.ReverseBytes16(s)
	}
	return s
}
