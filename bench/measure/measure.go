package measure

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"syscall"
	"time"
)

// writeSize is the size of every write of a timed transfer (and of every
// read on the receiving side).
const writeSize = 128 << 10

// transfer is one timed stream.
type transfer struct {
	MBps      float64 // MB/s (10^6 bytes), first write until the receiver read everything
	CPUPerMiB float64 // process user+system CPU time per MiB moved, ms
	PeakHeap  uint64  // highest heap in use sampled during the transfer, bytes
}

// stream sends writeSize writes for d over a connection from dial to the
// accepting side of ln and times it: rate, the process's CPU time per MiB
// and the peak heap in use sampled every 10 ms meanwhile.
func stream(dial func() (net.Conn, error), ln net.Listener, d time.Duration) (transfer, error) {
	type received struct {
		n   int64
		err error
	}
	// Dial first: the handshake completes in the listener's backlog, and a
	// failed dial leaves no Accept behind to take the next connection.
	c, err := dial()
	if err != nil {
		return transfer{}, fmt.Errorf("dial: %w", err)
	}
	got := make(chan received, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- received{err: err}
			return
		}
		defer s.Close()
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, s, make([]byte, writeSize))
		got <- received{n, err}
	}()
	buf := make([]byte, writeSize)
	peak := sampleHeap()
	start, startCPU := time.Now(), cpuTime()
	var sent int64
	for time.Since(start) < d {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			c.Close()
			peak()
			return transfer{}, fmt.Errorf("write: %w", err)
		}
	}
	c.Close()
	r := <-got
	elapsed, cpu := time.Since(start), cpuTime()-startCPU
	high := peak()
	if r.err == nil && r.n != sent {
		r.err = fmt.Errorf("received %d of %d bytes", r.n, sent)
	}
	if r.err != nil {
		return transfer{}, fmt.Errorf("receive: %w", r.err)
	}
	mib := float64(sent) / (1 << 20)
	return transfer{
		MBps:      float64(sent) / elapsed.Seconds() / 1e6,
		CPUPerMiB: float64(cpu) / float64(time.Millisecond) / mib,
		PeakHeap:  high,
	}, nil
}

// rawLoopback streams over kernel TCP on 127.0.0.1 for d.
func rawLoopback(d time.Duration) (transfer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return transfer{}, err
	}
	defer ln.Close()
	return stream(func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }, ln, d)
}

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapMetrics add up to runtime.MemStats.HeapInuse; runtime/metrics reads
// them without stopping the world, so sampling does not disturb a transfer.
var heapMetrics = []string{"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes"}

// heapNow returns the heap in use (live and not yet swept objects plus
// fragmentation), without a GC.
func heapNow() uint64 {
	s := []metrics.Sample{{Name: heapMetrics[0]}, {Name: heapMetrics[1]}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// sampleHeap samples heapNow every 10 ms until the returned function is
// called, which returns the highest sample.
func sampleHeap() func() uint64 {
	var (
		wg   sync.WaitGroup
		high = heapNow()
		stop = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				high = max(high, heapNow())
			}
		}
	}()
	return func() uint64 {
		close(stop)
		wg.Wait()
		return max(high, heapNow())
	}
}

// settledHeap returns the heap in use after two GCs, polled until it stops
// growing (devices allocate buffers in goroutines that start after they
// are up), for at most 5 seconds.
func settledHeap() uint64 {
	gcHeap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	prev := gcHeap()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		cur := gcHeap()
		if cur <= prev+prev/200 {
			return max(cur, prev)
		}
		prev = cur
	}
	return prev
}

// mib converts bytes to MiB.
func mib(b float64) float64 { return b / (1 << 20) }

// Median returns the median of xs (0 for none).
func Median(xs []float64) float64 { return Quantile(xs, 0.5) }

// Quantile returns the q-quantile (0..1) of xs by the nearest-rank method,
// ceil(q·n)-th smallest, as mesh's benchmarks (0 for none). xs is not
// modified.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}
