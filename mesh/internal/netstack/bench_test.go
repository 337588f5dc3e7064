//go:build unix

package netstack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"
	stocknetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// Commands (results and how to read them: docs/PERFORMANCE.md):
//
//	go test -run '^$' -bench BenchmarkTCPThroughput -benchtime 3x -count 3 ./mesh/internal/netstack/
//	go test -run '^$' -bench BenchmarkIdleHeap -benchtime 1x ./mesh/internal/netstack/
//	go test -run '^$' -bench BenchmarkTCPTuning -benchtime 12x ./mesh/internal/netstack/
//	go test -run '^$' -bench BenchmarkOurs -benchtime 3x -cpuprofile cpu.out ./mesh/internal/netstack/

const (
	rawBytes   = 256 << 20
	oursBytes  = 128 << 20
	stockBytes = 32 << 20

	tuningBytes = 48 << 20
)

func rawRate(b *testing.B) nsbench.Result { return nsbench.Raw(b, rawBytes) }

func stockRate(b *testing.B) nsbench.Result { return nsbench.Stock(b, stockBytes, DefaultMTU) }

func oursRate(b *testing.B, cfg Config, bind func() conn.Bind) nsbench.Result {
	return oursRateN(b, cfg, bind, oursBytes)
}

func oursRateN(b *testing.B, cfg Config, bind func() conn.Bind, size int) nsbench.Result {
	p := newPair(b, cfg, bind)
	defer p.close()
	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 9000))
	require.NoError(b, err)
	defer ln.Close()
	return nsbench.Stream(b, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return p.a.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 9000))
	}, ln, size)
}

// BenchmarkTCPThroughput measures, in one run, raw loopback TCP, a pair of
// stock wireguard-go netstack devices and a pair of ours (each with the
// default bind a member uses), and reports the medians over the iterations
// of the rates and of the per-iteration ratios. The member-level version,
// through mesh.Join, is BenchmarkUserspaceThroughput in package mesh.
func BenchmarkTCPThroughput(b *testing.B) {
	var raw, stock, ours, ratioRaw, ratioStock []float64
	var rawCPU, stockCPU, oursCPU []float64
	for i := 0; i < b.N; i++ {
		r, s, o := rawRate(b), stockRate(b), oursRate(b, Config{}, memberBind)
		raw, stock, ours = append(raw, r.MBps), append(stock, s.MBps), append(ours, o.MBps)
		rawCPU, stockCPU, oursCPU = append(rawCPU, r.CPUPerMiB), append(stockCPU, s.CPUPerMiB), append(oursCPU, o.CPUPerMiB)
		ratioRaw, ratioStock = append(ratioRaw, o.MBps/r.MBps), append(ratioStock, o.MBps/s.MBps)
	}
	med := nsbench.Median
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(raw), "raw_MB/s")
	b.ReportMetric(med(stock), "stock_MB/s")
	b.ReportMetric(med(ours), "ours_MB/s")
	b.ReportMetric(med(ratioRaw), "ours/raw")
	b.ReportMetric(med(ratioStock), "ours/stock")
	b.ReportMetric(med(rawCPU), "raw_cpu_ms/MiB")
	b.ReportMetric(med(stockCPU), "stock_cpu_ms/MiB")
	b.ReportMetric(med(oursCPU), "ours_cpu_ms/MiB")
}

// BenchmarkIdleHeap reports the heap one idle member holds: a stack, a
// wireguard-go device with its bind, and one configured peer. Stock members
// are measured the same way for comparison. The member-level version, with
// the control client and a real mesh, is BenchmarkIdleMember in package mesh.
func BenchmarkIdleHeap(b *testing.B) {
	const oursN, stockN = 100, 20
	for i := 0; i < b.N; i++ {
		base := nsbench.HeapInUse()
		var closers []func()
		var prev *nsbench.Device
		var prevAddr netip.Addr
		for j := 0; j < oursN; j++ {
			a := netip.AddrFrom4([4]byte{10, 78, byte(j >> 8), byte(j)})
			n, err := New(Config{Addrs: []netip.Addr{a}})
			require.NoError(b, err)
			w := nsbench.NewDevice(b, n, memberBind())
			if j > 0 { // one peer each, as a member of a small mesh has
				w.AddPeer(b, prev, netip.PrefixFrom(prevAddr, 32))
			}
			prev, prevAddr = w, a
			closers = append(closers, func() { w.Dev.Close(); n.Close() })
		}
		ours := float64(nsbench.SettledHeap()-base) / oursN / (1 << 20)
		for _, c := range closers {
			c()
		}
		closers = closers[:0]

		base = nsbench.HeapInUse()
		for j := 0; j < stockN; j++ {
			a := netip.AddrFrom4([4]byte{10, 79, byte(j >> 8), byte(j)})
			td, _, err := stocknetstack.CreateNetTUN([]netip.Addr{a}, nil, DefaultMTU)
			require.NoError(b, err)
			w := nsbench.NewDevice(b, td, conn.NewDefaultBind())
			if j > 0 {
				w.AddPeer(b, prev, netip.PrefixFrom(prevAddr, 32))
			}
			prev, prevAddr = w, a
			closers = append(closers, func() { w.Dev.Close() })
		}
		stock := float64(nsbench.SettledHeap()-base) / stockN / (1 << 20)
		for _, c := range closers {
			c()
		}
		// The stack alone, without a wireguard-go device.
		base = nsbench.HeapInUse()
		var nets []*Net
		for j := 0; j < oursN; j++ {
			n, err := New(Config{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 80, byte(j >> 8), byte(j)})}})
			require.NoError(b, err)
			nets = append(nets, n)
		}
		stackOnly := float64(nsbench.SettledHeap()-base) / oursN / (1 << 20)
		for _, n := range nets {
			n.Close()
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(stackOnly, "ours_stack_MiB")
		b.ReportMetric(ours, "ours_MiB/member")
		b.ReportMetric(stock, "stock_MiB/member")
	}
}

// BenchmarkOurs measures only our pair (for profiling).
func BenchmarkOurs(b *testing.B) {
	var r, c []float64
	for i := 0; i < b.N; i++ {
		o := oursRate(b, Config{}, memberBind)
		r, c = append(r, o.MBps), append(c, o.CPUPerMiB)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(nsbench.Median(r), "ours_MB/s")
	b.ReportMetric(nsbench.Median(c), "ours_cpu_ms/MiB")
}

// BenchmarkTCPTuning compares the levers one at a time against the default.
// The machine is shared and its load swings by ±30%, so each iteration
// streams tuningBytes through the default pair and then through the variant
// pair, back to back, and the reported ratios (variant/default) are means
// over those pairs.
func BenchmarkTCPTuning(b *testing.B) {
	withTuning := func(f func(*tuning)) Config {
		t := defaultTuning
		f(&t)
		return Config{tuning: &t}
	}
	stdBind := conn.NewDefaultBind
	variants := []struct {
		name string
		cfg  Config
		bind func() conn.Bind
	}{
		{"cubic_rack", withTuning(func(t *tuning) { t.congestion, t.rack = "cubic", true }), memberBind},
		{"rack", withTuning(func(t *tuning) { t.rack = true }), memberBind},
		{"cubic", withTuning(func(t *tuning) { t.congestion = "cubic" }), memberBind},
		{"nosack", withTuning(func(t *tuning) { t.sack = false }), memberBind},
		{"buf1M", withTuning(func(t *tuning) {
			t.sendBuf.Max, t.recvBuf.Max = 1<<20, 1<<20
		}), memberBind},
		{"buf512K", withTuning(func(t *tuning) {
			t.sendBuf.Max, t.recvBuf.Max = 512<<10, 512<<10
			t.sendBuf.Default, t.recvBuf.Default = 512<<10, 512<<10
		}), memberBind},
		{"buf4M", withTuning(func(t *tuning) {
			t.sendBuf.Max, t.recvBuf.Max = 4<<20, 4<<20
		}), memberBind},
		{"sndDefault4M", withTuning(func(t *tuning) { t.sendBuf.Default = 4 << 20 }), memberBind},
		{"bothDefault4M", withTuning(func(t *tuning) {
			t.sendBuf.Default, t.recvBuf.Default = 4<<20, 4<<20
		}), memberBind},
		{"nogso", withTuning(func(t *tuning) { t.noGSO = true }), memberBind},
		{"nogro", withTuning(func(t *tuning) { t.noGRO = true }), memberBind},
		{"gso32K", withTuning(func(t *tuning) { t.gsoMax = 32 << 10 }), memberBind},
		{"gso16K", withTuning(func(t *tuning) { t.gsoMax = 16 << 10 }), memberBind},
		{"gso24K", withTuning(func(t *tuning) { t.gsoMax = 24 << 10 }), memberBind},
		{"gso48K", withTuning(func(t *tuning) { t.gsoMax = 48 << 10 }), memberBind},
		{"twopass_csum", withTuning(func(t *tuning) { t.twoPassSum = true }), memberBind},
		{"nopace", withTuning(func(t *tuning) { t.noPace = true }), memberBind},
		{"nomoderate", withTuning(func(t *tuning) { t.moderateRecv = false }), memberBind},
		{"batch8", Config{BatchSize: 8}, func() conn.Bind { return udpbind.New(8) }},
		{"batch32", Config{BatchSize: 32}, func() conn.Bind { return udpbind.New(32) }},
		{"batch64", Config{BatchSize: 64}, func() conn.Bind { return udpbind.New(64) }},
		{"batch128", Config{BatchSize: 128}, func() conn.Bind { return udpbind.New(128) }},
		{"stdbind", Config{}, stdBind},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			var rate, ratio, cpuRatio []float64
			for i := 0; i < b.N; i++ {
				def := oursRateN(b, Config{}, memberBind, tuningBytes)
				r := oursRateN(b, v.cfg, v.bind, tuningBytes)
				rate = append(rate, r.MBps)
				ratio = append(ratio, r.MBps/def.MBps)
				cpuRatio = append(cpuRatio, r.CPUPerMiB/def.CPUPerMiB)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(nsbench.Median(rate), "MB/s")
			b.ReportMetric(nsbench.Median(ratio), "rate_vs_default")
			b.ReportMetric(nsbench.Median(cpuRatio), "cpu_vs_default")
		})
	}
}

// oursWarm streams warm bytes through a new pair and then measures size
// bytes on a second connection of the same pair: the measured transfer
// does not include wireguard-go growing its pools of 64 KiB message
// buffers (as in a member that has carried traffic before).
func oursWarm(b testing.TB, cfg Config, warm, size int) nsbench.Result {
	p := newPair(b, cfg, memberBind)
	defer p.close()
	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 9000))
	require.NoError(b, err)
	defer ln.Close()
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return p.a.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 9000))
	}
	nsbench.Stream(b, dial, ln, warm)
	return nsbench.Stream(b, dial, ln, size)
}

// BenchmarkTCPTuningWarm is BenchmarkTCPTuning on warm pairs (oursWarm):
// default and variant alternate, each warmed with 32 MiB, then 64 MiB
// measured.
func BenchmarkTCPTuningWarm(b *testing.B) {
	withTuning := func(f func(*tuning)) Config {
		t := defaultTuning
		f(&t)
		return Config{tuning: &t}
	}
	variants := []struct {
		name string
		cfg  Config
	}{
		{"nopace", withTuning(func(t *tuning) { t.noPace = true })},
		{"pace_tx_only", withTuning(func(t *tuning) { t.noPaceRx = true })},
		{"pace64", withTuning(func(t *tuning) { t.paceLimit = 64 })},
		{"pace256", withTuning(func(t *tuning) { t.paceLimit = 256 })},
		{"wait1ms", withTuning(func(t *tuning) { t.paceWait = time.Millisecond })},
		{"wait20ms", withTuning(func(t *tuning) { t.paceWait = 20 * time.Millisecond })},
		{"buf1M", withTuning(func(t *tuning) { t.sendBuf.Max, t.recvBuf.Max = 1<<20, 1<<20 })},
		{"buf1M_nopace", withTuning(func(t *tuning) {
			t.sendBuf.Max, t.recvBuf.Max = 1<<20, 1<<20
			t.noPace = true
		})},
		{"twopass_csum", withTuning(func(t *tuning) { t.twoPassSum = true })},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			var ratio, cpuRatio, defCPU []float64
			for i := 0; i < b.N; i++ {
				def := oursWarm(b, Config{}, 32<<20, 64<<20)
				r := oursWarm(b, v.cfg, 32<<20, 64<<20)
				ratio = append(ratio, r.MBps/def.MBps)
				cpuRatio = append(cpuRatio, r.CPUPerMiB/def.CPUPerMiB)
				defCPU = append(defCPU, def.CPUPerMiB)
			}
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(nsbench.Median(defCPU), "default_cpu_ms/MiB")
			b.ReportMetric(nsbench.Median(ratio), "rate_vs_default")
			b.ReportMetric(nsbench.Median(cpuRatio), "cpu_vs_default")
		})
	}
}
