package netstack

import (
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// tuning holds the TCP knobs of a stack. Buffers are limits, not
// allocations: an idle connection holds none of them.
type tuning struct {
	sendBuf      tcpip.TCPSendBufferSizeRangeOption
	recvBuf      tcpip.TCPReceiveBufferSizeRangeOption
	moderateRecv bool
	sack         bool
	rack         bool          // RACK loss detection (gVisor's default) vs classic dupack
	congestion   string        // "reno" or "cubic"
	noGSO        bool          // benchmarks only: no TCP segmentation offload
	noGRO        bool          // benchmarks only: no GRO on inbound batches
	gsoMax       uint32        // benchmarks only: GSO segment size limit (0 = 64 KiB)
	twoPassSum   bool          // benchmarks only: splitter copies, then checksums (before copySum)
	noPace       bool          // benchmarks only: PaceBind returns the bind as is (no pacing of tun Read)
	noPaceRx     bool          // benchmarks only: PaceBind paces tun Read but not the receive functions
	paceLimit    int           // benchmarks only: packets each way other than maxInFlight
	paceWait     time.Duration // benchmarks only: longest wait other than paceWait
}

// defaultTuning is what New uses: reno congestion control, SACK, and
// classic loss detection (no RACK). It is the only combination in this
// gVisor version (go.mod pins 2025-05-03) without a way to stall a
// connection for good, that is, leave a sender with data to send and no
// segment or timer that would ever send it. TestTransfersDoNotStall found
// two (its lossy part drops 3% of WireGuard data packets; the TCP probe
// printed the state of the stalled sender):
//
//   - cubic can set the congestion window to 0: its per-ACK update in
//     congestion avoidance (cubic.go, getCwnd) moves the window toward
//     W_cubic(t+RTT) even below the window, and after a loss detected at a
//     window of 1, W_max is 0.85 and W_cubic 0.6, so one ACK of two packets
//     takes a window of 2 to int(0.76) = 0. With nothing in flight no ACK
//     comes back and no timer is armed. Probe: W_max 0.85, K 0.86, cwnd
//     2 → 0. The lossy part stalled in 12 of 20 runs of 4 s with cubic
//     and RACK (the old default), the clean part once in three 20 s runs
//     under -race. Fixed upstream in 2026-08 (google/gvisor#13958). RACK
//     makes a loss at window 1 common (its tail loss probe and reorder
//     timer detect losses right after a retransmission timeout); without
//     RACK it takes three duplicate ACKs at a window of 1, rare but
//     possible after cubic's update shrank the window below what is in
//     flight. Reno's window never goes below 1.
//   - RACK's tail loss probe replaces the retransmission timer
//     (rack.go, schedulePTO); when the probe fires and has nothing to send
//     (a probe already out), postXmit re-arms the retransmission timer only
//     if Outstanding > 0, and that count of packets in flight drifts (SACK
//     and recovery accounting, clamped at 0) to 0 while data is still
//     unacknowledged. Probe: 1142 bytes in
//     flight, outstanding 0, sacked -11, cwnd 13, RTO 200 ms, nothing
//     received for 15 s. Seen with reno and RACK in 2 of 16 20 s runs of
//     the lossy part (6 connections). Without RACK every ACK that
//     leaves data unacknowledged re-arms the retransmission timer.
//
// Tailscale turned RACK off for a "complete stall" (tailscale#14934) and
// runs cubic without it; cubic without RACK keeps the first stall, rarer.
//
// The cost, measured with BenchmarkTCPTuning (two members over 127.0.0.1,
// one TCP stream, 48 MiB per leg, back-to-back pairs default/variant on
// the shared 2-core dev box, load 5-9; rate and CPU per MiB relative to
// this default, >1 = more; two runs of 10 pairs):
//
//	variant              rate         CPU/MiB
//	cubic + RACK (old)   1.69, 1.72   0.64, 0.69   stalls (first)
//	reno + RACK          1.14, 1.06   0.82, 0.84   stalls (second)
//	cubic                1.03, 0.83   0.72, 0.73   can stall (first), rarer
//
// Through members (BenchmarkUserspaceThroughput, old and new alternated,
// two rounds of 5 at load 2.4-3) the rate did not change measurably:
// ours/raw 0.127, 0.108 (old) vs 0.140, 0.099; the CPU per MiB grew from
// 4.47, 3.73 to 5.15, 4.74 ms. Loss recovery without RACK walks the SACK
// scoreboard (SetPipe) on every ACK, which is where reno without RACK
// spends its extra CPU. Revisit with a gVisor that has #13958 and a
// fixed tail loss probe.
//
// Earlier measurements, with cubic + RACK as the default (12 pairs):
//
//	variant              rate   CPU/MiB
//	reno (RACK on)       1.01   1.35
//	cubic, RACK off      0.96   1.11
//	reno, RACK off       0.89   1.81
//	SACK off             1.04   1.00
//	1 MiB max buffers    0.91   1.06
//	4 MiB max buffers    1.09   1.05
//	4 MiB default send   1.02   1.01
//	no rcv moderation    1.03   1.01
//
// Buffer sizes within 1-8 MiB made no measurable difference on loopback
// with cubic. With reno (unpaced) they do, which capped them at 1 MiB for
// a while: reno has no HyStart, so slow start only ends at a loss or at
// the window limit, and with 8 MiB limits a stream kept up to 8 MiB in
// flight. Through wireguard-go that is ~5,900 MTU packets, each in a 64 KiB message
// buffer: ~370 MiB of queued buffers per direction (a heap profile of the
// compare benchmark's transfer: 371 of 389 MiB in
// device.GetMessageBuffer), cycled through the caches and the pools, and
// queues whose overflow costs retransmission timeouts. Cubic's HyStart
// used to leave slow start at ~410 segments (below), which is why the
// move to reno showed no cost on an idle machine. Measured on a loaded
// one (BenchmarkUserspaceThroughput, -benchtime 3x, variants interleaved,
// load 12-16, three rounds; ours/stock, MB/s, CPU ms/MiB):
//
//	8 MiB max (before)   1.3-2.8   33-70     6.8-9.5
//	4 MiB max            2.1-3.3   45-51     7.1-8.0
//	2 MiB max            3.4-4.5   92-156    5.1-6.1
//	1 MiB max            4.2-10    89-220    4.6-5.4
//	1 MiB send, 8 recv   4.0-4.4   62-91     5.9-7.0
//	8 MiB send, 1 recv   3.9-8.4   78-110    5.5-7.1
//	cubic + RACK, 8 MiB  3.6-8.6   79-201    5.2-8.1   (stalls: above)
//
// The cost of 1 MiB: one connection moves at most 1 MiB per round trip
// in userspace mode (~170 Mbit/s at 50 ms, ~420 Mbit/s at 20 ms). Kernel
// mode uses the host's TCP and is not affected.
//
// The limits are 8 MiB again since the pacing of wireguard-go's pipeline
// (pace.go): at most 8 batches (128 packets then, at batch 16) each way
// wait inside wireguard-go, the
// rest of a full window waits in TCP's send buffer and the socket's
// receive buffer, so a large window no longer means 64 KiB buffers per
// packet, and long paths get their window back. Measured against 1 MiB
// with pacing (BenchmarkTCPTuningWarm, 5 and 8 warm pairs, load 4-7; rate,
// CPU per MiB relative to 1 MiB paced):
//
//	8 MiB, paced          1.33, 1.20   0.87, 0.87
//	1 MiB, unpaced        0.66, 1.08   1.26, 0.95
//	8 MiB, unpaced        0.80, 0.88   1.32, 1.22
//
// and through members (compare children, 4 rounds alternated, load 4-6;
// CPU per MiB): 8 MiB paced 4.9-5.4 ms (median 5.1), 1 MiB paced 4.3-6.1
// (5.4), 1 MiB unpaced 4.8-6.2 (5.9). Receive-buffer moderation
// stays on. SACK stays on: it matters under real loss, which loopback
// barely has. Buffers are limits, not allocations.
//
// Levers measured later the same way (BenchmarkTCPTuning, 8-10 pairs,
// medians; the machine's load swung between 2 and 9 during the runs):
//
//	variant              rate   CPU/MiB
//	GSO max 48 KiB       0.99   1.01
//	GSO max 32 KiB       0.92   1.07
//	GSO max 24 KiB       0.84   1.16
//	GSO max 16 KiB       0.84   1.18
//	batch 8              0.80   0.97
//	batch 32             0.96   0.89
//
// The largest GSO segment (64 KiB) stays: smaller ones only add trips
// through the stack. Batch 16 stayed then: 8 loses a fifth of the rate, 32
// saved about a tenth of the CPU per MiB in one run (0.83–1.01 in three A/B
// rounds of a member pair) but cost an idle member 2 MiB more of
// wireguard-go buffers. Since the fork's buffers are sized for the MTU
// (2 KiB instead of 64), a batch costs an idle member almost nothing, and
// the batch is 24 (member pairs, compare children, 3-4 interleaved
// rounds, load 1.5-2; CPU per MiB, medians):
//
//	batch 16   4.36  4.75  4.35
//	batch 24   -     4.05  4.22
//	batch 32   4.00  3.98  4.17
//	batch 48   -     5.56  -
//	batch 64   6.41  -     -
//
// Since the pacing of wireguard-go's pipeline (pace.go), smaller buffers
// no longer save CPU (BenchmarkTCPTuningWarm, 5 warm pairs: 1 MiB limits
// 1.16x the rate at 1.11x the CPU per MiB; before the pacing 2.16x and
// 0.62x, because a small window was what bounded wireguard-go's queues).
//
// Not levers in this gVisor version: the initial congestion window
// (tcp.InitialCwnd is a constant) and HyStart (cubic always runs it; reno
// has none). Measured with the TCP info of a loopback stream when cubic
// was the default: cubic leaves slow start through HyStart at a
// window of ~410 segments with a smoothed RTT of ~5 ms, of which nearly all
// is queueing inside the wireguard-go pipeline, with no retransmissions: the
// window is not what limits the rate, the CPU is (crypto ~25%, sendmmsg
// and recvmmsg on loopback ~18%, copies and gVisor's chunk clearing ~11%,
// per profile).
var defaultTuning = tuning{
	sendBuf:      tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
	recvBuf:      tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
	moderateRecv: true,
	sack:         true,
	rack:         false,
	congestion:   "reno",
}

func (t *tuning) apply(s *stack.Stack) error {
	set := func(name string, opt tcpip.SettableTransportProtocolOption) error {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fmt.Errorf("set TCP option %s: %s", name, err)
		}
		return nil
	}
	sack := tcpip.TCPSACKEnabled(t.sack)
	mod := tcpip.TCPModerateReceiveBufferOption(t.moderateRecv)
	cc := tcpip.CongestionControlOption(t.congestion)
	rec := tcpip.TCPRecovery(0)
	if t.rack {
		rec = tcpip.TCPRACKLossDetection
	}
	for _, o := range []struct {
		name string
		opt  tcpip.SettableTransportProtocolOption
	}{
		{"sack", &sack},
		{"send buffer", &t.sendBuf},
		{"receive buffer", &t.recvBuf},
		{"moderate receive buffer", &mod},
		{"congestion control", &cc},
		{"recovery", &rec},
	} {
		if err := set(o.name, o.opt); err != nil {
			return err
		}
	}
	return nil
}
