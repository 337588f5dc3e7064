package netstack

import (
	"fmt"

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
	rack         bool   // RACK loss detection (gVisor's default) vs classic dupack
	congestion   string // "reno" or "cubic"
	noGSO        bool   // benchmarks only: no TCP segmentation offload
	noGRO        bool   // benchmarks only: no GRO on inbound batches
	gsoMax       uint32 // benchmarks only: GSO segment size limit (0 = 64 KiB)
}

// defaultTuning is what New uses. Measured with BenchmarkTCPTuning (two
// members over 127.0.0.1, one TCP stream, 48 MiB per leg, 12 back-to-back
// pairs default/variant on the shared 2-core dev box; rate and CPU per MiB
// relative to this default, >1 = more):
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
// Cubic with RACK and SACK is the cheapest per byte (reno, or loss
// detection without RACK, spends 10-80% more CPU per MiB in the SACK
// scoreboard after each loss); buffer sizes within 1-8 MiB make no
// measurable difference on loopback, so the maximum stays large (8 MiB) for
// long-RTT paths and receive-buffer moderation stays on. SACK stays on: it
// matters under real loss, which loopback barely has. Buffers are limits,
// not allocations.
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
// through the stack. Batch 16 stays: 8 loses a fifth of the rate, 32 saves
// about a tenth of the CPU per MiB in one run (0.83–1.01 in three A/B rounds
// of a member pair) but costs an idle member 2 MiB more of
// wireguard-go buffers (see DefaultBatchSize).
//
// Not levers in this gVisor version: the initial congestion window
// (tcp.InitialCwnd is a constant) and HyStart (cubic always runs it; reno
// has none and costs 35% more CPU per MiB, above). Measured with the TCP
// info of a loopback stream: cubic leaves slow start through HyStart at a
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
	rack:         true,
	congestion:   "cubic",
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
