package netstack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/bits"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
)

// A TCP connection between two members must never stall: every transfer
// either finishes or fails with an error. TestTransfersDoNotStall runs
// transfers of varied sizes in both directions on several connections at
// once and fails (with the TCP state of the stalled connection and the
// goroutines) when one stalls (see stallAfter). Its lossy part found the
// two stalls described at defaultTuning.

var (
	stallDuration = flag.Duration("stall.duration", 4*time.Second, "how long each TestTransfersDoNotStall subtest starts new transfers")
	stallWorkers  = flag.Int("stall.workers", 3, "concurrent connections in TestTransfersDoNotStall")
)

// A transfer has stalled when no byte moved for stallAfter and neither
// end received a TCP segment of the connection for stallAfter and for more
// than twice their retransmission timeout. A live sender retransmits within
// one timeout, which doubles each time it expires, so its silence stays
// below two of them; a sender that can no longer send (window 0, or no
// timer armed) sends nothing at all. On a loaded 2-core machine a lossy
// transfer can make no progress for longer while segments still flow: the
// smoothed RTT reaches a second (queueing), the backed-off timeout several,
// and a lost retransmission costs one each. maxIdle bounds the wait for
// progress whatever the segments say.
const (
	stallAfter = 15 * time.Second
	maxIdle    = 90 * time.Second
)

func TestTransfersDoNotStall(t *testing.T) {
	// lossy drops 3% of WireGuard data packets on the way out of both
	// members: recovery and retransmission timeouts every few
	// transfers, and congestion windows of a few packets.
	// Its transfers are smaller (up to 256 KiB each way) so that the last
	// one ends soon after the others.
	for _, tc := range []struct {
		name    string
		loss    float64
		maxSize int
	}{{"clean", 0, 4 << 20}, {"lossy", 0.03, 256 << 10}} {
		t.Run(tc.name, func(t *testing.T) { testTransfersDoNotStall(t, tc.loss, tc.maxSize) })
	}
}

func testTransfersDoNotStall(t *testing.T, loss float64, maxSize int) {
	probe := newTCPProbe()
	cfg := Config{probe: probe.record}
	p := newPair(t, cfg, func() conn.Bind { return &lossyBind{Bind: memberBind(), loss: loss} })
	defer p.close()
	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 9100))
	require.NoError(t, err)
	var (
		srv   sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	defer func() {
		ln.Close()
		mu.Lock()
		for c := range conns { // a stalled transfer's server side
			c.Close()
		}
		mu.Unlock()
		srv.Wait()
	}()
	srv.Add(1)
	go func() {
		defer srv.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			srv.Add(1)
			go func() {
				defer srv.Done()
				_ = serveStall(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
		}
	}()

	var (
		wg        sync.WaitGroup
		failed    atomic.Bool
		transfers atomic.Int64
		moved     atomic.Int64
	)
	end := time.Now().Add(*stallDuration)
	for w := range *stallWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for i := 0; time.Now().Before(end) && !failed.Load(); i++ {
				up, down := stallSize(rng, maxSize), stallSize(rng, maxSize)
				if err := stallTransfer(p, probe, rng, up, down); err != nil {
					if failed.CompareAndSwap(false, true) {
						t.Errorf("worker %d transfer %d (up %d B, down %d B): %v", w, i, up, down, err)
						t.Log(probe.dump(p))
					}
					return
				}
				transfers.Add(1)
				moved.Add(int64(up + down))
			}
		}()
	}
	wg.Wait()
	t.Logf("%d transfers, %.1f MiB; TCP A: %s; TCP B: %s", transfers.Load(), float64(moved.Load())/(1<<20),
		tcpCounters(p.a.stack), tcpCounters(p.b.stack))
}

// stallSize returns a transfer size, log-uniform from 0 to max (a power
// of two).
func stallSize(rng *rand.Rand, max int) int {
	if rng.IntN(8) == 0 {
		return 0
	}
	return rng.IntN(1 << rng.IntN(bits.Len(uint(max))))
}

// serveStall answers one stall connection: an 8-byte header says how many
// bytes to send back; it sends them while reading everything the client
// sends until EOF, then sends the 8-byte count it read and closes.
func serveStall(c net.Conn) error {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	down := binary.BigEndian.Uint64(hdr[:])
	werr := make(chan error, 1)
	go func() { werr <- writeN(c, int(down), 48<<10) }()
	n, err := io.Copy(io.Discard, c)
	if err := errors.Join(err, <-werr); err != nil {
		return err
	}
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	_, err = c.Write(hdr[:])
	return err
}

func writeN(w io.Writer, n, chunk int) error {
	buf := make([]byte, chunk)
	for n > 0 {
		k, err := w.Write(buf[:min(n, chunk)])
		n -= k
		if err != nil {
			return err
		}
	}
	return nil
}

// progressConn counts the bytes moved through a connection.
type progressConn struct {
	net.Conn
	last atomic.Int64 // unix nanoseconds of the last byte moved
}

func (c *progressConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *progressConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// stallTransfer sends up bytes to the server and receives down bytes from
// it on a new connection. It returns an error naming the connection when
// it stalls (see stallAfter).
func stallTransfer(p *pair, probe *tcpProbe, rng *rand.Rand, up, down int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*stallAfter) // SYN backoff 1+2+4+8 s
	defer cancel()
	raw, err := p.a.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 9100))
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	c := &progressConn{Conn: raw}
	c.last.Store(time.Now().UnixNano())
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- stallExchange(c, rng.IntN(256<<10)+1, up, down) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%s: %w", c.LocalAddr(), err)
			}
			return nil
		case <-tick.C:
			idle := time.Since(time.Unix(0, c.last.Load()))
			if idle < stallAfter {
				continue
			}
			port := uint16(c.LocalAddr().(*net.TCPAddr).Port)
			rto, silence := connTimes(p, probe, port)
			if (silence > stallAfter && silence > 2*rto+time.Second) || idle > maxIdle {
				err := fmt.Errorf("%s → %s: stalled, no byte moved for %v, no segment received for %v (retransmission timeout %v)",
					c.LocalAddr(), c.RemoteAddr(), idle.Round(time.Millisecond), silence.Round(time.Millisecond), rto.Round(time.Millisecond))
				c.SetDeadline(time.Now()) // unblock the exchange; Close after the dump
				<-done
				return err
			}
		}
	}
}

func stallExchange(c *progressConn, chunk, up, down int) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(down))
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("write header: %w", err)
	}
	werr := make(chan error, 1)
	go func() {
		err := writeN(c, up, chunk)
		if err == nil {
			err = c.Conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.Copy(io.Discard, io.LimitReader(c, int64(down)))
	if err := errors.Join(rerr, <-werr); err != nil {
		return fmt.Errorf("after %d of %d bytes down: %w", got, down, err)
	}
	if got != int64(down) {
		return fmt.Errorf("got %d of %d bytes down", got, down)
	}
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("read count of %d bytes up: %w", up, err)
	}
	if n := binary.BigEndian.Uint64(hdr[:]); n != uint64(up) {
		return fmt.Errorf("server read %d of %d bytes up", n, up)
	}
	return nil
}

// connTimes returns the larger retransmission timeout of the two endpoints
// of the connection from A's port and how long ago the later of them
// received a segment.
func connTimes(p *pair, probe *tcpProbe, port uint16) (rto, silence time.Duration) {
	silence = maxIdle
	for _, n := range []*Net{p.a, p.b} {
		for _, te := range n.stack.RegisteredEndpoints() {
			ep, ok := te.(*tcp.Endpoint)
			if !ok {
				continue
			}
			id := ep.Info().(*stack.TransportEndpointInfo).ID
			if (n == p.a && id.LocalPort == port) || (n == p.b && id.RemotePort == port) {
				var info tcpip.TCPInfoOption
				ep.GetSockOpt(&info)
				rto = max(rto, info.RTO)
				probe.mu.Lock()
				if st := probe.last[tcp.TCPEndpointID(id)]; st != nil {
					silence = min(silence, n.stack.Clock().NowMonotonic().Sub(st.seg))
				}
				probe.mu.Unlock()
			}
		}
	}
	return rto, silence
}

// tcpProbe keeps the TCP state of every endpoint after the last segment it
// received (tcp.NewProtocolProbe).
type tcpProbe struct {
	mu   sync.Mutex
	last map[tcp.TCPEndpointID]*probeState
	// zero holds, per endpoint, the states before and after the first
	// segment that left it with a congestion window of 0.
	zero map[tcp.TCPEndpointID][2]probeState
}

// probeState is the part of a tcp.TCPEndpointState the dump shows.
type probeState struct {
	seg        tcpip.MonotonicTime
	snd        tcp.TCPSenderState
	rcv        tcp.TCPReceiverState
	sack       tcp.TCPSACKInfo
	rcvBuf     tcp.TCPRcvBufState
	sndBufUsed int
	sndBufSize int
	sndClosed  bool
}

func newTCPProbe() *tcpProbe {
	return &tcpProbe{last: map[tcp.TCPEndpointID]*probeState{}, zero: map[tcp.TCPEndpointID][2]probeState{}}
}

func (p *tcpProbe) record(s *tcp.TCPEndpointState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ps := p.last[s.ID]
	if ps == nil {
		ps = new(probeState)
		p.last[s.ID] = ps
	}
	prev := *ps
	*ps = probeState{
		seg: s.SegTime, snd: s.Sender, rcv: s.Receiver, sack: s.SACK, rcvBuf: s.RcvBufState,
		sndBufUsed: s.SndBufState.SndBufUsed, sndBufSize: s.SndBufState.SndBufSize, sndClosed: s.SndBufState.SndClosed,
	}
	if _, seen := p.zero[s.ID]; !seen && ps.snd.SndCwnd == 0 && prev.snd.SndCwnd != 0 {
		p.zero[s.ID] = [2]probeState{prev, *ps}
	}
}

// dump describes the open TCP endpoints of both stacks (current info and
// the state after their last received segment), the stacks' TCP counters
// and the goroutines of the TCP and WireGuard paths.
func (p *tcpProbe) dump(pr *pair) string {
	var b strings.Builder
	for _, side := range []struct {
		name string
		n    *Net
	}{{"A", pr.a}, {"B", pr.b}} {
		st := side.n.stack
		fmt.Fprintf(&b, "\n== stack %s TCP counters: %s\n", side.name, tcpCounters(st))
		for _, te := range st.RegisteredEndpoints() {
			ep, ok := te.(*tcp.Endpoint)
			if !ok || tcp.EndpointState(ep.State()) == tcp.StateTimeWait {
				continue
			}
			var info tcpip.TCPInfoOption
			ep.GetSockOpt(&info)
			id := ep.Info().(*stack.TransportEndpointInfo).ID
			fmt.Fprintf(&b, "-- %s:%d → %s:%d %s info %+v\n", id.LocalAddress, id.LocalPort, id.RemoteAddress, id.RemotePort,
				tcp.EndpointState(ep.State()), info)
			p.mu.Lock()
			if s := p.last[tcp.TCPEndpointID(id)]; s != nil {
				fmt.Fprintf(&b, "   last segment received %v ago\n%s", st.Clock().NowMonotonic().Sub(s.seg).Round(time.Millisecond), s)
			}
			if z, ok := p.zero[tcp.TCPEndpointID(id)]; ok {
				fmt.Fprintf(&b, "   congestion window fell to 0 %v ago; before that segment:\n%s   after it:\n%s",
					st.Clock().NowMonotonic().Sub(z[1].seg).Round(time.Millisecond), &z[0], &z[1])
			}
			p.mu.Unlock()
		}
	}
	fmt.Fprintf(&b, "\n== WireGuard A:\n%s\n== WireGuard B:\n%s", ipcGet(pr.wa), ipcGet(pr.wb))
	var g bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&g, 2)
	b.WriteString("\n== goroutines (TCP, netstack, wireguard):\n")
	for _, gr := range strings.Split(g.String(), "\n\n") {
		if strings.Contains(gr, "gvisor") || strings.Contains(gr, "wireguard") || strings.Contains(gr, "stall") {
			b.WriteString(gr + "\n\n")
		}
	}
	return b.String()
}

func (s *probeState) String() string {
	snd, rcv := &s.snd, &s.rcv
	return fmt.Sprintf("   sender: una %d nxt %d (%d in flight) wnd %d cwnd %d ssthresh %d outstanding %d sacked %d rto %v srtt %v closed %v\n"+
		"   recovery %+v\n   rack %+v\n   cubic %+v\n   sack blocks %v received %v\n"+
		"   receiver: nxt %d acc %d (window %d) pending %d; rcv buf %+v; snd buf used %d of %d closed %v\n",
		snd.SndUna, snd.SndNxt, snd.SndNxt-snd.SndUna, snd.SndWnd, snd.SndCwnd, snd.Ssthresh, snd.Outstanding, snd.SackedOut,
		snd.RTO, snd.RTTState.SRTT, snd.Closed,
		snd.FastRecovery, snd.RACKState, snd.Cubic, s.sack.Blocks, s.sack.ReceivedBlocks,
		rcv.RcvNxt, rcv.RcvAcc, rcv.RcvAcc-rcv.RcvNxt, rcv.PendingBufUsed, s.rcvBuf, s.sndBufUsed, s.sndBufSize, s.sndClosed)
}

func tcpCounters(st *stack.Stack) string {
	c := st.Stats().TCP
	return fmt.Sprintf("sent %d valid rcvd %d invalid rcvd %d retransmits %d fast-retransmit %d timeouts %d "+
		"fast-recovery %d sack-recovery %d tlp-recovery %d spurious %d spurious-rto %d dsack %d send-errors %d",
		c.SegmentsSent.Value(), c.ValidSegmentsReceived.Value(), c.InvalidSegmentsReceived.Value(),
		c.Retransmits.Value(), c.FastRetransmit.Value(), c.Timeouts.Value(), c.FastRecovery.Value(),
		c.SACKRecovery.Value(), c.TLPRecovery.Value(), c.SpuriousRecovery.Value(), c.SpuriousRTORecovery.Value(),
		c.SegmentsAckedWithDSACK.Value(), c.SegmentSendErrors.Value())
}

func ipcGet(d *nsbench.Device) string {
	conf, err := d.Dev.IpcGet()
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, l := range strings.Split(conf, "\n") {
		if strings.HasPrefix(l, "rx_bytes") || strings.HasPrefix(l, "tx_bytes") || strings.HasPrefix(l, "last_handshake") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, " ")
}

// lossyBind drops a share of the WireGuard data packets it sends.
type lossyBind struct {
	conn.Bind
	loss float64
}

func (b *lossyBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if b.loss == 0 {
		return b.Bind.Send(bufs, ep)
	}
	keep := bufs[:0:0]
	for _, p := range bufs {
		if len(p) >= 4 && binary.LittleEndian.Uint32(p) == 4 && rand.Float64() < b.loss { // 4: transport data
			continue
		}
		keep = append(keep, p)
	}
	if len(keep) == 0 {
		return nil
	}
	return b.Bind.Send(keep, ep)
}
