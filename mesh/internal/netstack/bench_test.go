//go:build unix

package netstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"
	stocknetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// Commands (the numbers in the package report come from these):
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

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// lastCPU is the CPU time per MiB of the last streamTCP call: unlike the
// rate it hardly depends on how busy the (shared) machine is.
var lastCPU float64

// streamTCP sends size bytes over c to the accepting side of ln and returns
// the rate in MB/s (10^6 bytes), timed from the first write until the
// receiver has read everything.
func streamTCP(tb testing.TB, dial func() (net.Conn, error), ln net.Listener, size int) float64 {
	tb.Helper()
	got := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer s.Close()
		// 64 KiB reads on every leg (io.Discard's ReadFrom would use 8 KiB).
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, s, make([]byte, 64<<10))
		if err == nil && n != int64(size) {
			err = fmt.Errorf("received %d of %d bytes", n, size)
		}
		got <- err
	}()
	c, err := dial()
	require.NoError(tb, err)
	buf := make([]byte, 64<<10)
	start, startCPU := time.Now(), cpuTime()
	for left := size; left > 0; {
		k := min(left, len(buf))
		_, err := c.Write(buf[:k])
		require.NoError(tb, err)
		left -= k
	}
	require.NoError(tb, c.Close())
	require.NoError(tb, <-got)
	lastCPU = float64(cpuTime()-startCPU) / float64(time.Millisecond) / float64(size>>20)
	return float64(size) / time.Since(start).Seconds() / 1e6
}

func rawRate(b *testing.B) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	return streamTCP(b, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }, ln, rawBytes)
}

func stockRate(b *testing.B) float64 {
	ta, na, err := stocknetstack.CreateNetTUN([]netip.Addr{testAddrA}, nil, DefaultMTU)
	require.NoError(b, err)
	tb, nb, err := stocknetstack.CreateNetTUN([]netip.Addr{testAddrB}, nil, DefaultMTU)
	require.NoError(b, err)
	wa, wb := newWGDev(b, ta, conn.NewDefaultBind()), newWGDev(b, tb, conn.NewDefaultBind())
	defer wa.dev.Close()
	defer wb.dev.Close()
	wa.peer(b, wb, netip.PrefixFrom(testAddrB, 32))
	wb.peer(b, wa, netip.PrefixFrom(testAddrA, 32))
	ln, err := nb.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 9000))
	require.NoError(b, err)
	defer ln.Close()
	return streamTCP(b, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return na.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 9000))
	}, ln, stockBytes)
}

func oursRate(b *testing.B, cfg Config, bind func() conn.Bind) float64 {
	return oursRateN(b, cfg, bind, oursBytes)
}

func oursRateN(b *testing.B, cfg Config, bind func() conn.Bind, size int) float64 {
	p := newPair(b, cfg, bind)
	defer p.close()
	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 9000))
	require.NoError(b, err)
	defer ln.Close()
	return streamTCP(b, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return p.a.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 9000))
	}, ln, size)
}

// BenchmarkTCPThroughput measures, in one run, raw loopback TCP, a pair of
// stock wireguard-go netstack devices and a pair of ours (each with the
// default bind a member uses), and reports the ratios.
func BenchmarkTCPThroughput(b *testing.B) {
	var raw, stock, ours, rawCPU, stockCPU, oursCPU float64
	for i := 0; i < b.N; i++ {
		raw += rawRate(b)
		rawCPU += lastCPU
		stock += stockRate(b)
		stockCPU += lastCPU
		ours += oursRate(b, Config{}, memberBind)
		oursCPU += lastCPU
	}
	n := float64(b.N)
	raw, stock, ours = raw/n, stock/n, ours/n
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(raw, "raw_MB/s")
	b.ReportMetric(stock, "stock_MB/s")
	b.ReportMetric(ours, "ours_MB/s")
	b.ReportMetric(ours/raw, "ours/raw")
	b.ReportMetric(ours/stock, "ours/stock")
	b.ReportMetric(rawCPU/n, "raw_cpu_ms/MiB")
	b.ReportMetric(stockCPU/n, "stock_cpu_ms/MiB")
	b.ReportMetric(oursCPU/n, "ours_cpu_ms/MiB")
}

// heapInUse returns HeapInuse after two GCs.
func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// settledHeap polls heapInUse until it stops growing: wireguard-go devices
// allocate their buffers in goroutines that start after NewDevice/Up return.
func settledHeap() uint64 {
	prev := heapInUse()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		cur := heapInUse()
		if cur <= prev+prev/200 {
			return max(cur, prev)
		}
		prev = cur
	}
	return prev
}

// BenchmarkIdleHeap reports the heap one idle member holds: a stack, a
// wireguard-go device with its bind, and one configured peer. Stock members
// are measured the same way for comparison.
func BenchmarkIdleHeap(b *testing.B) {
	const oursN, stockN = 100, 20
	for i := 0; i < b.N; i++ {
		base := heapInUse()
		var closers []func()
		var prev *wgDev
		var prevAddr netip.Addr
		for j := 0; j < oursN; j++ {
			a := netip.AddrFrom4([4]byte{10, 78, byte(j >> 8), byte(j)})
			n, err := New(Config{Addrs: []netip.Addr{a}})
			require.NoError(b, err)
			w := newWGDev(b, n, memberBind())
			if j > 0 { // one peer each, as a member of a small mesh has
				w.peer(b, prev, netip.PrefixFrom(prevAddr, 32))
			}
			prev, prevAddr = w, a
			closers = append(closers, func() { w.dev.Close(); n.Close() })
		}
		ours := float64(settledHeap()-base) / oursN / (1 << 20)
		for _, c := range closers {
			c()
		}
		closers = closers[:0]

		base = heapInUse()
		for j := 0; j < stockN; j++ {
			a := netip.AddrFrom4([4]byte{10, 79, byte(j >> 8), byte(j)})
			td, _, err := stocknetstack.CreateNetTUN([]netip.Addr{a}, nil, DefaultMTU)
			require.NoError(b, err)
			w := newWGDev(b, td, conn.NewDefaultBind())
			if j > 0 {
				w.peer(b, prev, netip.PrefixFrom(prevAddr, 32))
			}
			prev, prevAddr = w, a
			closers = append(closers, func() { w.dev.Close() })
		}
		stock := float64(settledHeap()-base) / stockN / (1 << 20)
		for _, c := range closers {
			c()
		}
		// The stack alone, without a wireguard-go device.
		base = heapInUse()
		var nets []*Net
		for j := 0; j < oursN; j++ {
			n, err := New(Config{Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 80, byte(j >> 8), byte(j)})}})
			require.NoError(b, err)
			nets = append(nets, n)
		}
		stackOnly := float64(settledHeap()-base) / oursN / (1 << 20)
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
	var r float64
	for i := 0; i < b.N; i++ {
		r += oursRate(b, Config{}, memberBind)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(r/float64(b.N), "ours_MB/s")
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
		{"reno", withTuning(func(t *tuning) { t.congestion = "reno" }), memberBind},
		{"norack", withTuning(func(t *tuning) { t.rack = false }), memberBind},
		{"reno_norack", withTuning(func(t *tuning) { t.congestion, t.rack = "reno", false }), memberBind},
		{"nosack", withTuning(func(t *tuning) { t.sack = false }), memberBind},
		{"buf1M", withTuning(func(t *tuning) {
			t.sendBuf.Max, t.recvBuf.Max = 1<<20, 1<<20
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
		{"nomoderate", withTuning(func(t *tuning) { t.moderateRecv = false }), memberBind},
		{"batch32", Config{BatchSize: 32}, func() conn.Bind { return udpbind.New(32) }},
		{"batch64", Config{BatchSize: 64}, func() conn.Bind { return udpbind.New(64) }},
		{"batch128", Config{BatchSize: 128}, func() conn.Bind { return udpbind.New(128) }},
		{"stdbind", Config{}, stdBind},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			var rate, ratio, cpuRatio float64
			for i := 0; i < b.N; i++ {
				def := oursRateN(b, Config{}, memberBind, tuningBytes)
				defCPU := lastCPU
				r := oursRateN(b, v.cfg, v.bind, tuningBytes)
				rate += r
				ratio += r / def
				cpuRatio += lastCPU / defCPU
			}
			n := float64(b.N)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(rate/n, "MB/s")
			b.ReportMetric(ratio/n, "rate_vs_default")
			b.ReportMetric(cpuRatio/n, "cpu_vs_default")
		})
	}
}
