package netstack

import (
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// linkEndpoint is the gVisor link endpoint behind a Net. It replaces the
// channel endpoint of the stock wireguard-go netstack:
//
//   - Outbound (stack → wireguard-go): WritePackets appends to a slice queue
//     and wakes the single reader; tun Read drains up to len(bufs) packets in
//     one call, copying each straight from the packet's views into
//     wireguard-go's buffer (no intermediate view, no goroutine per packet).
//     TCP uses host-style segmentation offload (HostGSOSupported): the stack
//     hands us segments of up to 64 KiB and Read cuts them into MSS-sized
//     packets (gso.go), so the TCP/IP stack runs once per 64 KiB, not once
//     per 1.4 KiB.
//   - Inbound (wireguard-go → stack): tun Write delivers each packet on the
//     caller's goroutine through gVisor's GRO, which coalesces the TCP
//     segments of one wireguard-go batch before they climb the stack.
type linkEndpoint struct {
	mtu uint32

	// disp is the attached dispatcher (nil when detached).
	disp atomic.Pointer[dispatcherBox]

	// q guards the outbound queue filled by WritePackets.
	q struct {
		sync.Mutex
		pkts   []*stack.PacketBuffer
		closed bool
	}
	// queued counts packets in q.pkts plus the reader's pending list; it
	// bounds memory when wireguard-go stops reading.
	queued atomic.Int32
	// wake has capacity 1: a token means "the queue may be non-empty".
	wake chan struct{}
	// done is closed by close(); it unblocks Read.
	done      chan struct{}
	closeOnce sync.Once

	// rd is owned by the (single) reader; the mutex makes concurrent Read
	// calls safe, though wireguard-go has only one reader.
	rd struct {
		sync.Mutex
		pending []*stack.PacketBuffer // drained from q, not yet fully copied
		next    int                   // index of the first unread packet in pending
		split   splitter              // progress through a GSO packet
		local   [][]byte              // scratch for loopback
		timer   *time.Timer           // for waitRoom
	}

	pace   pacer // packets inside wireguard-go on their way out; see pace.go
	paceRx pacer // packets inside wireguard-go on their way in

	noGSO   bool                  // benchmarks: plain MTU-sized segments from the stack
	gsoMax  uint32                // benchmarks: GSO size other than gsoMaxSize
	noGRO   bool                  // benchmarks: deliver inbound packets one by one
	groPool sync.Pool             // of *gro.GRO
	filter  func(pkt []byte) bool // inbound filter; nil = accept all
	isLocal func(netip.Addr) bool // reports the stack's own addresses

	// policy is the PacketFilter in force (nil: none), see
	// Net.SetPacketFilter.
	policy atomic.Pointer[policyBox]
}

type policyBox struct{ f PacketFilter }

type dispatcherBox struct{ d stack.NetworkDispatcher }

const (
	// maxQueued is the outbound queue limit in packets (a GSO packet counts
	// once). Beyond it packets are dropped and TCP backs off, as with a full
	// NIC ring. Since tun Read paces (pace.go), this queue holds what TCP
	// sends beyond the 8 batches inside wireguard-go (128 packets at batch
	// 16, when this was measured; 192 at 24): with 512, six
	// connections of small segments overflowed it (227 drops and 6
	// retransmission timeouts in 20 s of TestTransfersDoNotStall/clean).
	// A queued TCP packet references its connection's send buffer; what a
	// full queue of other packets (UDP) holds is at most 4096 MTU-sized
	// copies, ~6 MiB. The queue is a slice that is empty and small while
	// idle.
	maxQueued = 4096

	// gsoMaxSize is the largest segment the stack hands us for GSO.
	gsoMaxSize = 1 << 16

	// rxChecksumOffload skips TCP/UDP checksum verification of inbound
	// packets: they arrive through WireGuard, whose AEAD already
	// authenticates every byte the peer sent (a peer that routes packets
	// from elsewhere passes on what its own links' CRCs accepted). It saves
	// a pass over every byte received.
	rxChecksumOffload = true
)

func newLinkEndpoint(mtu int) *linkEndpoint {
	return &linkEndpoint{
		mtu:  uint32(mtu),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

// --- stack.LinkEndpoint ---

var (
	_ stack.LinkEndpoint = (*linkEndpoint)(nil)
	_ stack.GSOEndpoint  = (*linkEndpoint)(nil)
)

func (e *linkEndpoint) MTU() uint32                             { return e.mtu }
func (e *linkEndpoint) SetMTU(uint32)                           {}
func (e *linkEndpoint) MaxHeaderLength() uint16                 { return 0 }
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress          { return "" }
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress)        {}
func (e *linkEndpoint) Wait()                                   {}
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }
func (e *linkEndpoint) AddHeader(*stack.PacketBuffer)           {}
func (e *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool    { return true }
func (e *linkEndpoint) SetOnCloseAction(func())                 {}
func (e *linkEndpoint) Close()                                  { e.close() }
func (e *linkEndpoint) GSOMaxSize() uint32 {
	if e.gsoMax != 0 {
		return e.gsoMax
	}
	return gsoMaxSize
}
func (e *linkEndpoint) SupportedGSO() stack.SupportedGSO {
	if e.noGSO {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

func (e *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	c := stack.CapabilityNone
	if rxChecksumOffload {
		c |= stack.CapabilityRXChecksumOffload
	}
	return c
}

func (e *linkEndpoint) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		e.disp.Store(nil)
		return
	}
	e.disp.Store(&dispatcherBox{d})
}

func (e *linkEndpoint) IsAttached() bool { return e.disp.Load() != nil }

// WritePackets queues outbound packets for tun Read. It never blocks.
func (e *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	e.q.Lock()
	if e.q.closed {
		e.q.Unlock()
		return 0, &tcpip.ErrClosedForSend{}
	}
	for _, pkt := range pkts.AsSlice() {
		if e.queued.Load() >= maxQueued {
			break
		}
		e.queued.Add(1)
		e.q.pkts = append(e.q.pkts, pkt.IncRef())
		n++
	}
	e.q.Unlock()
	if n > 0 {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
	if n == 0 {
		return 0, &tcpip.ErrNoBufferSpace{}
	}
	return n, nil
}

// --- tun.Device data path ---

// read implements tun.Device.Read.
func (e *linkEndpoint) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	e.rd.Lock()
	defer e.rd.Unlock()
	for {
		if e.pace.full() {
			if !e.waitRoom() {
				return 0, os.ErrClosed
			}
		}
		if e.rd.next == len(e.rd.pending) {
			e.refill()
		}
		if e.rd.next < len(e.rd.pending) {
			if n := e.loopback(bufs, sizes, offset, e.fill(bufs, sizes, offset)); n > 0 {
				e.pace.read(n)
				if pb := e.policy.Load(); pb != nil {
					for i := range n {
						pb.f.Outbound(bufs[i][offset : offset+sizes[i]])
					}
				}
				return n, nil
			}
			continue
		}
		select {
		case <-e.wake:
		case <-e.done:
			return 0, os.ErrClosed
		}
	}
}

// waitRoom waits until a Send makes room in the pacer, or paceWait passes
// (then the count is forgotten). It reports false if the
// endpoint was closed.
func (e *linkEndpoint) waitRoom() bool {
	if e.rd.timer == nil {
		e.rd.timer = time.NewTimer(e.pace.wait)
	} else {
		e.rd.timer.Reset(e.pace.wait)
	}
	defer e.rd.timer.Stop()
	for e.pace.full() {
		select {
		case <-e.pace.room:
		case <-e.rd.timer.C:
			e.pace.forget()
			return true
		case <-e.done:
			return false
		}
	}
	return true
}

// refill swaps the shared queue into the reader's pending list.
func (e *linkEndpoint) refill() {
	clear(e.rd.pending)
	e.q.Lock()
	e.rd.pending, e.q.pkts = e.q.pkts, e.rd.pending[:0]
	e.q.Unlock()
	e.rd.next = 0
}

// fill copies pending packets into bufs; it returns the packet count.
func (e *linkEndpoint) fill(bufs [][]byte, sizes []int, offset int) int {
	n := 0
	for n < len(bufs) && e.rd.next < len(e.rd.pending) {
		pkt := e.rd.pending[e.rd.next]
		var finished bool
		if pkt.GSOOptions.Type == stack.GSOTCPv4 || pkt.GSOOptions.Type == stack.GSOTCPv6 {
			var k int
			k, finished = e.rd.split.next(pkt, bufs[n:], sizes[n:], offset)
			n += k
		} else {
			sizes[n] = copyPacket(bufs[n][offset:], pkt)
			if sizes[n] > 0 {
				n++
			}
			finished = true
		}
		if finished {
			pkt.DecRef()
			e.rd.pending[e.rd.next] = nil
			e.rd.next++
			e.queued.Add(-1)
		}
	}
	return n
}

// loopback delivers packets addressed to the stack itself back into it and
// removes them from bufs[:n]; it returns the remaining count. The stack runs
// with HandleLocal off (promiscuous forwarding needs that: with it on, every
// source address counts as local and is dropped as a martian), so own
// traffic comes through here. It runs on the reader's goroutine, where no
// stack lock is held.
func (e *linkEndpoint) loopback(bufs [][]byte, sizes []int, offset, n int) int {
	for i := 0; i < n; i++ {
		if p := bufs[i][offset : offset+sizes[i]]; e.isLocal(dstAddr(p)) {
			e.rd.local = append(e.rd.local, p)
		}
	}
	if len(e.rd.local) == 0 {
		return n
	}
	// deliver copies each packet into the stack, so the buffers can be
	// compacted after it. They are compacted by copying, never swapped:
	// the caller (wireguard-go) ties bufs[i] to its i-th element.
	e.deliver(e.rd.local, 0, false)
	clear(e.rd.local)
	e.rd.local = e.rd.local[:0]
	k := 0
	for i := 0; i < n; i++ {
		p := bufs[i][offset : offset+sizes[i]]
		if e.isLocal(dstAddr(p)) {
			continue
		}
		if k != i {
			if len(p) > len(bufs[k])-offset {
				continue // wireguard-go's buffers are all one size; never here
			}
			sizes[k] = copy(bufs[k][offset:], p)
		}
		k++
	}
	return k
}

// dstAddr returns the destination of an IP packet (invalid if malformed).
func dstAddr(p []byte) netip.Addr {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(p[16:20]))
	case len(p) >= 40 && p[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(p[24:40]))
	}
	return netip.Addr{}
}

// copyPacket copies the whole packet into dst and returns its length, or 0
// when it does not fit (the packet is dropped).
func copyPacket(dst []byte, pkt *stack.PacketBuffer) int {
	size := pkt.Size()
	if size > len(dst) {
		return 0
	}
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil && n < size; v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(dst[n:size], s[off:])
		off = 0
	}
	return n
}

// write implements tun.Device.Write: packets are delivered synchronously.
func (e *linkEndpoint) write(bufs [][]byte, offset int) (int, error) {
	e.paceRx.sent(len(bufs))
	return e.deliver(bufs, offset, true)
}

// deliver hands packets to the stack; fromMesh packets pass the
// PacketFilter first (the stack's own looped-back packets do not).
func (e *linkEndpoint) deliver(bufs [][]byte, offset int, fromMesh bool) (int, error) {
	var policy PacketFilter
	if pb := e.policy.Load(); pb != nil && fromMesh {
		policy = pb.f
	}
	box := e.disp.Load()
	if box == nil {
		select {
		case <-e.done:
			return 0, os.ErrClosed
		default:
			return len(bufs), nil // not attached yet: drop like a down link
		}
	}
	g, _ := e.groPool.Get().(*gro.GRO)
	if g == nil {
		g = new(gro.GRO)
		g.Init(!e.noGRO)
	}
	g.Dispatcher = box.d
	for _, b := range bufs {
		if len(b) <= offset {
			continue
		}
		p := b[offset:]
		var proto tcpip.NetworkProtocolNumber
		switch p[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			continue
		}
		if policy != nil && !policy.Inbound(p) {
			continue
		}
		if e.filter != nil && !e.filter(p) {
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		pkt.NetworkProtocolNumber = proto
		pkt.RXChecksumValidated = rxChecksumOffload
		g.Enqueue(pkt)
		pkt.DecRef()
	}
	g.Flush()
	g.Dispatcher = nil
	e.groPool.Put(g)
	return len(bufs), nil
}

// enqueueRaw queues a packet built outside the stack (an echo reply for a
// forwarded address) for tun Read.
func (e *linkEndpoint) enqueueRaw(p []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	var l stack.PacketBufferList
	l.PushBack(pkt)
	e.WritePackets(l)
	pkt.DecRef()
}

// close stops Read and drops queued packets. Idempotent.
func (e *linkEndpoint) close() {
	e.closeOnce.Do(func() {
		close(e.done)
		e.q.Lock()
		e.q.closed = true
		for i, p := range e.q.pkts {
			p.DecRef()
			e.q.pkts[i] = nil
		}
		e.q.pkts = nil
		e.q.Unlock()
		e.rd.Lock()
		for _, p := range e.rd.pending[e.rd.next:] {
			p.DecRef()
		}
		e.rd.pending, e.rd.next = nil, 0
		e.rd.split.reset()
		e.rd.Unlock()
	})
}
