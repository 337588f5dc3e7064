package udpbind

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/conn"
)

// batchConn is the part of ipv4.PacketConn / ipv6.PacketConn we use.
type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

// socket is one UDP socket of a Bind.
type socket struct {
	conn      *net.UDPConn
	bc        batchConn
	txOffload atomic.Bool // UDP_SEGMENT usable
	rxOffload bool        // UDP_GRO enabled
	rs        *resender   // told about every datagram received

	// rx is used only by the socket's single receive goroutine
	// (wireguard-go calls each ReceiveFunc from one goroutine).
	rx struct {
		msgs    []ipv6.Message
		scratch []byte // one GRO read (up to 64 datagrams)
		n       int    // bytes in scratch
		off     int    // next datagram in scratch
		seg     int    // datagram size in scratch (GRO segment size)
		from    *Endpoint
		last    *Endpoint // cache: peers rarely change address
	}
}

func newSocket(c *net.UDPConn, v6 bool, batch int, rs *resender) *socket {
	s := &socket{conn: c, rs: rs}
	if v6 {
		s.bc = ipv6.NewPacketConn(c)
	} else {
		s.bc = ipv4.NewPacketConn(c)
	}
	tx, rx := enableOffload(c)
	s.txOffload.Store(tx)
	s.rxOffload = rx
	s.rx.msgs = make([]ipv6.Message, batch)
	for i := range s.rx.msgs {
		s.rx.msgs[i].Buffers = make(net.Buffers, 1)
		s.rx.msgs[i].OOB = make([]byte, oobSize)
	}
	if rx {
		s.rx.scratch = make([]byte, maxDatagram)
	}
	return s
}

// endpoint returns an Endpoint for addr, reusing the last one when equal.
func (s *socket) endpoint(addr net.Addr) *Endpoint {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return nil
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if l := s.rx.last; l != nil && l.ap == ap {
		return l
	}
	s.rx.last = newEndpoint(ap)
	return s.rx.last
}

// receive implements conn.ReceiveFunc. A datagram larger than the buffer it
// would go to is dropped, not cut: wireguard-go's buffers may be sized for
// the tunnel MTU (the fork's device.NewDeviceSized), and a peer whose MTU
// is larger than that sends nothing a buffer could hold whole. Off Linux
// truncation is not detected (msgTrunc is 0): the cut datagram is
// delivered and fails WireGuard's authentication.
func (s *socket) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	var n int
	var err error
	if s.rxOffload {
		n, err = s.receiveGRO(bufs, sizes, eps)
	} else {
		n, err = s.receiveBatch(bufs, sizes, eps)
	}
	s.rs.received(bufs, sizes, n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// Woken (Bind.Wake): clear the deadline before the caller looks at
		// its queue, so that a Wake after that look is not lost.
		if cerr := s.conn.SetReadDeadline(time.Time{}); cerr != nil {
			return 0, wrapClosed(cerr)
		}
		return 0, ErrWoken
	}
	return n, err
}

// receiveBatch reads up to len(bufs) datagrams with one recvmmsg.
func (s *socket) receiveBatch(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	msgs := s.rx.msgs[:min(len(bufs), len(s.rx.msgs))]
	for i := range msgs {
		msgs[i].Buffers[0] = bufs[i]
		msgs[i].OOB = msgs[i].OOB[:cap(msgs[i].OOB)]
	}
	n, err := s.bc.ReadBatch(msgs, 0)
	if err != nil {
		return 0, wrapClosed(err)
	}
	k := 0
	for i := 0; i < n; i++ {
		ep := s.endpoint(msgs[i].Addr)
		if ep == nil || msgs[i].N == 0 || msgs[i].Flags&msgTrunc != 0 {
			continue // a datagram larger than the buffer: see receive
		}
		if k != i {
			copy(bufs[k], bufs[i][:msgs[i].N])
		}
		sizes[k], eps[k] = msgs[i].N, ep
		k++
	}
	return k, nil
}

// receiveGRO reads one (possibly coalesced) datagram into scratch and splits
// it into bufs; what does not fit is returned by the next call.
func (s *socket) receiveGRO(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r := &s.rx
	if r.off >= r.n {
		m := r.msgs[:1]
		m[0].Buffers[0] = r.scratch
		m[0].OOB = m[0].OOB[:cap(m[0].OOB)]
		if _, err := s.bc.ReadBatch(m, 0); err != nil {
			return 0, wrapClosed(err)
		}
		r.n, r.off = m[0].N, 0
		r.seg = groSize(m[0].OOB[:m[0].NN])
		if r.seg <= 0 {
			r.seg = r.n
		}
		r.from = s.endpoint(m[0].Addr)
		if r.from == nil {
			r.n = 0
			return 0, nil
		}
	}
	k := 0
	for k < len(bufs) && r.off < r.n {
		end := min(r.off+r.seg, r.n)
		if end-r.off > len(bufs[k]) {
			r.off = end // larger than the buffer: see receive
			continue
		}
		sizes[k] = copy(bufs[k], r.scratch[r.off:end])
		eps[k] = r.from
		r.off = end
		k++
	}
	return k, nil
}

// send writes bufs to e, coalescing runs of equal-sized datagrams into
// UDP_SEGMENT messages when the kernel supports it.
func (s *socket) send(bufs [][]byte, e *Endpoint, msgs []ipv6.Message) error {
	for {
		offload := s.txOffload.Load()
		var n int
		if offload {
			n = coalesce(bufs, e, msgs)
		} else {
			for i, b := range bufs {
				msgs[i].Buffers = append(msgs[i].Buffers[:0], b)
				msgs[i].Addr = e.ua
				msgs[i].OOB = msgs[i].OOB[:0]
			}
			n = len(bufs)
		}
		err := s.writeAll(msgs[:n])
		if err != nil && offload && shouldDisableGSO(err) {
			s.txOffload.Store(false)
			continue
		}
		return wrapClosed(err)
	}
}

func (s *socket) writeAll(msgs []ipv6.Message) error {
	for len(msgs) > 0 {
		n, err := s.bc.WriteBatch(msgs, 0)
		if err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// coalesce packs bufs into msgs: each message carries a run of datagrams of
// one size (the last of a run may be shorter) as an iovec list, sent as one
// UDP_SEGMENT message: no copying, the kernel cuts it at the segment size.
//
// A message's payload stays below what a GSO packet may hold whole
// (maxGSOPayload), not just below the largest UDP datagram: a message of
// 46 datagrams of 1424 bytes (65504, a full batch of 48 or 64 TCP
// segments through a member pair) has 65546 bytes with its headers on
// loopback, so the kernel cut it in software and the receiver read the
// 46 one recvmsg each; wireguard-go then handed the stack ~3 packets per
// tun Write instead of ~14, and a pair at batch 64 used 1.8x the CPU per
// MiB of batch 24 at 0.6x its throughput.
func coalesce(bufs [][]byte, e *Endpoint, msgs []ipv6.Message) int {
	maxLen := maxGSOPayload(e.ap.Addr().Is6())
	base, seg, total, closed := -1, 0, 0, false
	for _, b := range bufs {
		if base >= 0 && !closed && len(msgs[base].Buffers) < maxSegments && len(b) <= seg && total+len(b) <= maxLen {
			msgs[base].Buffers = append(msgs[base].Buffers, b)
			total += len(b)
			closed = len(b) < seg // a short datagram ends the run
			continue
		}
		if base >= 0 {
			setSegment(&msgs[base], seg)
		}
		base++
		msgs[base].Buffers = append(msgs[base].Buffers[:0], b)
		msgs[base].Addr = e.ua
		msgs[base].OOB = msgs[base].OOB[:0]
		seg, total, closed = len(b), len(b), false
	}
	if base >= 0 {
		setSegment(&msgs[base], seg)
	}
	return base + 1
}

// maxGSOPayload is the most UDP payload one UDP_SEGMENT message carries:
// with the UDP and IP headers and linkHeaderRoom it stays below
// gsoMaxBytes (the kernel segments a packet whose length reaches
// gso_max_size).
func maxGSOPayload(v6 bool) int {
	ipHeader := 20
	if v6 {
		ipHeader = 40
	}
	return gsoMaxBytes - 1 - linkHeaderRoom - ipHeader - 8
}

func setSegment(m *ipv6.Message, seg int) {
	if len(m.Buffers) > 1 {
		putSegmentSize(&m.OOB, seg)
	}
}

func wrapClosed(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return net.ErrClosed
	}
	return err
}
