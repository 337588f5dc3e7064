package control

// BenchmarkWatchFanout measures the watch fan-out end to end with N
// in-process watch clients, N = 1,000 and 10,000 in the same run, and
// reports each size and the ratios between them:
//
//	go test -run '^$' -bench BenchmarkWatchFanout -benchtime 1x -timeout 20m ./control/
//
// The watch streams are real HTTP/1.1 served by net/http (the service's
// whole handler chain), each on its own connection; the connections are
// in-memory pipes (net.Pipe) because 10,000 loopback TCP connections need
// 20,000 descriptors in one process, more than this machine's hard limit.
// Registrations go over loopback TCP (httptest). The clients are
// deliberately thin (2 KiB of buffers and one goroutine each), so the live
// heap per stream is the service's plus a small, constant client share.

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

const (
	fanoutDevices = 100 // members in the zone (each snapshot lists them)
	fanoutChanges = 20  // registrations timed per size
)

func BenchmarkWatchFanout(b *testing.B) {
	var small, large fanoutResult
	for range b.N {
		small = runFanout(b, 1_000)
		large = runFanout(b, 10_000)
	}
	for _, r := range []fanoutResult{small, large} {
		p := strconv.Itoa(r.n) + "-"
		b.ReportMetric(r.heapPerStream, p+"heap-B/stream")
		b.ReportMetric(r.stackPerStream, p+"stack-B/stream")
		b.ReportMetric(r.goroutinesPerStream, p+"goroutines/stream")
		b.ReportMetric(ms(r.regP50), p+"register-p50-ms")
		b.ReportMetric(ms(r.deliverP50), p+"deliver-p50-ms")
		b.ReportMetric(ms(r.deliverP99), p+"deliver-p99-ms")
		b.ReportMetric(ms(r.cpuPerChange), p+"cpu-ms/change")
	}
	b.ReportMetric(float64(large.regP50)/float64(small.regP50), "register-p50-x")
	b.ReportMetric(large.heapPerStream/small.heapPerStream, "heap/stream-x")
	b.ReportMetric(float64(large.deliverP99)/float64(small.deliverP99), "deliver-p99-x")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// pipeListener serves in-memory connections: dial hands the server one
// end of a net.Pipe.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	port  atomic.Int32
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error { l.once.Do(func() { close(l.done) }); return nil }

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func (l *pipeListener) dial() (net.Conn, error) {
	srv, cli := net.Pipe()
	port := int(l.port.Add(1))
	select {
	case l.conns <- pipeConn{srv, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}}:
		return cli, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// pipeConn gives a pipe end a client address (the rate limits key on it).
type pipeConn struct {
	net.Conn
	remote net.Addr
}

func (c pipeConn) RemoteAddr() net.Addr { return c.remote }

type fanoutResult struct {
	n                   int
	heapPerStream       float64
	stackPerStream      float64
	goroutinesPerStream float64
	regP50              time.Duration
	deliverP50          time.Duration
	deliverP99          time.Duration
	cpuPerChange        time.Duration
}

// fanoutClients is the shared state of the watch clients: each records
// when the first upsert above armed reaches it.
type fanoutClients struct {
	armed   atomic.Int64 // revision threshold of the change being timed
	startNs atomic.Int64 // when that change's registration was sent
	lat     []time.Duration
	got     atomic.Int64 // clients that received the armed change
	ready   sync.WaitGroup
	wg      sync.WaitGroup
}

func runFanout(b *testing.B, n int) fanoutResult {
	e := newEnv(b, func(c *serverConfig) {
		c.HeartbeatInterval = 15 * time.Second
		c.limits.streamsPerDevice = n
		c.limits.registerRate, c.limits.registerBurst = 1e6, 1<<20
	})
	tok := e.joinToken(api.DefaultZone, true)
	tokens := make([]string, fanoutDevices)
	for i := range tokens {
		_, r := e.mustRegister(tok, "m"+strconv.Itoa(i))
		tokens[i] = r.DeviceToken
	}
	pl := newPipeListener()
	hs := &http.Server{Handler: e.srv.Handler()}
	go hs.Serve(pl)
	defer hs.Close()
	cl := &fanoutClients{lat: make([]time.Duration, n)}
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		cl.wg.Wait()
	}()

	heap0, stack0, g0 := memNow()
	cl.ready.Add(n)
	for i := range n {
		c, err := pl.dial()
		require.NoError(b, err, "dialing watcher %d", i)
		conns[i] = c
		req := "GET /v1/zones/default/watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tokens[i%fanoutDevices] + "\r\n\r\n"
		_, err = c.Write([]byte(req))
		require.NoError(b, err)
		cl.wg.Add(1)
		go cl.read(i, c)
	}
	waitOrFail(b, &cl.ready, 5*time.Minute, "watchers connected")
	heap1, stack1, g1 := memNow()
	res := fanoutResult{
		n:                   n,
		heapPerStream:       float64(heap1-heap0) / float64(n),
		stackPerStream:      float64(stack1-stack0) / float64(n),
		goroutinesPerStream: float64(g1-g0) / float64(n),
	}

	var regs, delivered []time.Duration
	cpu0 := cpuTime()
	for k := range fanoutChanges {
		rev, _, err := e.st.Snapshot(context.Background(), api.DefaultZone)
		require.NoError(b, err)
		cl.got.Store(0)
		cl.armed.Store(rev)
		r := e.request(tok, newDevice(), "c"+strconv.Itoa(k))
		start := time.Now()
		cl.startNs.Store(start.UnixNano())
		code, _, ae := e.register(tok, r)
		regs = append(regs, time.Since(start))
		require.Nil(b, ae)
		require.Equal(b, http.StatusCreated, code)
		deadline := time.Now().Add(time.Minute)
		for cl.got.Load() < int64(n) {
			require.True(b, time.Now().Before(deadline), "change %d reached %d of %d watchers", k, cl.got.Load(), n)
			time.Sleep(time.Millisecond)
		}
		delivered = append(delivered, cl.lat...)
	}
	res.cpuPerChange = (cpuTime() - cpu0) / fanoutChanges
	slices.Sort(regs)
	slices.Sort(delivered)
	res.regP50 = regs[len(regs)/2]
	res.deliverP50 = delivered[len(delivered)/2]
	res.deliverP99 = delivered[len(delivered)*99/100]
	b.Logf("N=%d: heap %.0f B/stream, stack %.0f B/stream, %.2f goroutines/stream; register p50 %v; deliver p50 %v p99 %v; CPU %v/change",
		n, res.heapPerStream, res.stackPerStream, res.goroutinesPerStream, res.regP50, res.deliverP50, res.deliverP99, res.cpuPerChange)
	return res
}

// read is one watch client: it skips the snapshot, then times the first
// upsert above the armed revision.
func (cl *fanoutClients) read(i int, c net.Conn) {
	defer cl.wg.Done()
	readyOnce := sync.OnceFunc(cl.ready.Done)
	defer readyOnce() // a failed stream must not hang the benchmark
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		return
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 1024)
	first, seen := true, int64(0)
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			continue // the rest of a long line (the snapshot)
		}
		if err != nil {
			return
		}
		if first { // the snapshot
			first = false
			readyOnce()
			continue
		}
		if !bytes.Contains(line, []byte(`"type":"upsert"`)) {
			continue
		}
		rev := lineRevision(line)
		if armed := cl.armed.Load(); rev > armed && armed > seen {
			seen = armed
			cl.lat[i] = time.Duration(time.Now().UnixNano() - cl.startNs.Load())
			cl.got.Add(1)
		}
	}
}

func lineRevision(line []byte) int64 {
	const key = `"revision":`
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return 0
	}
	var v int64
	for _, c := range line[i+len(key):] {
		if c < '0' || c > '9' {
			break
		}
		v = v*10 + int64(c-'0')
	}
	return v
}

func memNow() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse, runtime.NumGoroutine()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func waitOrFail(b *testing.B, wg *sync.WaitGroup, d time.Duration, what string) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		b.Fatalf("%s: not within %v", what, d)
	}
}
