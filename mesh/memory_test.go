package mesh_test

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// Memory under load: no figure may grow with the number of transfers.

const (
	// memTransfers is the number of transfers TestHeapFlatOverTransfers runs.
	memTransfers = 50
	// memTransferBytes is the size of each: enough for the congestion
	// window and the receive buffer to grow to their steady state.
	memTransferBytes = 2 << 20
	// memWindow is the number of transfers whose lowest settled heap
	// stands for the start and for the end: the live heap after one
	// transfer varies by up to ~3 MiB with what wireguard-go's goroutines
	// happen to hold at that moment (a batch of 16 64 KiB message buffers
	// was 1 MiB before the fork's MTU-sized buffers, a batch of 24 2 KiB
	// ones is 48 KiB), while a leak raises the floor.
	memWindow = 5
	// memMargin is how far the end's floor may sit above the start's.
	// Closed connections stay in TIME_WAIT for gVisor's 60 s with about
	// 8 KiB each (endpoint, sender, port reservation): ~0.4 MiB after 50
	// transfers, bounded by the connection rate, not by their number. A
	// leak of one 64 KiB write buffer per transfer (what the netstack's
	// TCP connections once kept, tcpconn.go) would add 3 MiB; of one of
	// wireguard-go's message buffers (2 KiB since the fork) only 100 KiB,
	// which this margin does not see.
	memMargin = 2 << 20
)

// TestHeapFlatOverTransfers runs memTransfers TCP transfers, each on a
// connection of its own, between two userspace members and checks that
// neither the live heap after them nor the number of goroutines grows with
// their number.
func TestHeapFlatOverTransfers(t *testing.T) {
	if testing.Short() {
		t.Skip("50 transfers of 2 MiB: skipped with -short")
	}
	p := newMemPair(t)
	var heaps []uint64
	var goroutines int
	for i := range memTransfers {
		p.transfer(t, memTransferBytes)
		heaps = append(heaps, memLiveHeap())
		if i == 0 {
			goroutines = runtime.NumGoroutine()
		}
	}
	first := slices.Min(heaps[:memWindow])
	last := slices.Min(heaps[len(heaps)-memWindow:])
	t.Logf("live heap after each transfer (MiB): %.1f", memMiBs(heaps))
	require.LessOrEqualf(t, last, first+memMargin,
		"live heap grew from %.2f MiB (lowest after transfers 1–%d) to %.2f MiB (lowest after the last %d)",
		memMiB(first), memWindow, memMiB(last), memWindow)
	// Goroutines of closed connections end shortly after the close.
	memWaitFor(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines },
		func() string {
			return fmt.Sprintf("%d goroutines after %d transfers, %d after the first", runtime.NumGoroutine(), memTransfers, goroutines)
		})
}

// BenchmarkTransferHeap reports, per member of a pair, the peak heap in use
// sampled during a transfer of 32 MiB and the live heap after it, both
// above the settled heap before the pair joined (the service's share
// included), as the medians over b.N transfers.
func BenchmarkTransferHeap(b *testing.B) {
	base := memLiveHeap()
	p := newMemPair(b)
	p.transfer(b, 4<<20) // warm-up: handshake, pools
	var peak, after []float64
	b.ResetTimer()
	for range b.N {
		stop := memSampleHeap()
		p.transfer(b, 32<<20)
		high := stop()
		peak = append(peak, memMiB(high)-memMiB(base))
		after = append(after, memMiB(memLiveHeap())-memMiB(base))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(memMedian(peak)/2, "peak_MiB/member")
	b.ReportMetric(memMedian(after)/2, "after_MiB/member")
}

// memPair is two members joined through an in-process service, the
// second one discarding what TCP port 9000 receives.
type memPair struct {
	a  *mesh.Node
	to string
}

func newMemPair(tb testing.TB) *memPair {
	tb.Helper()
	s := meshtest.NewServer(tb)
	a, b := meshtest.Join(tb, s), meshtest.Join(tb, s)
	meshtest.WaitPeers(tb, a, 1)
	meshtest.WaitPeers(tb, b, 1)
	ln, err := b.Listen("tcp", ":9000")
	require.NoError(tb, err)
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.CopyBuffer(struct{ io.Writer }{io.Discard}, c, make([]byte, 64<<10))
			}()
		}
	}()
	return &memPair{a: a, to: netip.AddrPortFrom(b.Addr(), 9000).String()}
}

// transfer sends size bytes on a new connection, half-closes it and waits
// until the receiver has read everything and closed its side. A transfer
// that makes no progress for a minute fails (a stalled TCP connection).
func (p *memPair) transfer(tb testing.TB, size int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := p.a.Dial(ctx, "tcp", p.to)
	require.NoError(tb, err)
	defer c.Close()
	require.NoError(tb, c.SetDeadline(time.Now().Add(time.Minute)))
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		_, err := c.Write(buf)
		require.NoErrorf(tb, err, "after %d of %d bytes", sent, size)
	}
	cw, ok := c.(interface{ CloseWrite() error })
	require.True(tb, ok, "a member's TCP conn has CloseWrite")
	require.NoError(tb, cw.CloseWrite())
	n, err := io.Copy(io.Discard, c) // until the receiver closes
	require.NoError(tb, err)
	require.Zero(tb, n)
}

// memLiveHeap returns the bytes of live heap objects after two GCs (the
// second frees what the first's finalizers released), the lowest of three
// readings 20 ms apart: the last packets of a transfer may still be in
// wireguard-go's queues, each holding a message buffer.
func memLiveHeap() uint64 {
	var low uint64
	for i := range 3 {
		if i > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		if i == 0 || ms.HeapAlloc < low {
			low = ms.HeapAlloc
		}
	}
	return low
}

// memSampleHeap samples the heap in use every 5 ms (runtime/metrics: no
// stop-the-world) until the returned function is called, which returns
// the highest sample.
func memSampleHeap() func() uint64 {
	read := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64() + s[1].Value.Uint64()
	}
	var wg sync.WaitGroup
	high, stop := read(), make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				high = max(high, read())
			}
		}
	}()
	return func() uint64 {
		close(stop)
		wg.Wait()
		return max(high, read())
	}
}

func memMiB(b uint64) float64 { return float64(b) / (1 << 20) }

func memMiBs(bs []uint64) []float64 {
	out := make([]float64, len(bs))
	for i, b := range bs {
		out[i] = memMiB(b)
	}
	return out
}

func memMedian(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[(len(s)-1)/2]
}

// memWaitFor polls cond every 20 ms until it holds, failing with what() after
// timeout.
func memWaitFor(t testing.TB, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
