package mesh_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
	"github.com/wiremesh/wiremesh/meshtest"
)

// Member-level benchmarks: real members joined through an in-process
// service (meshtest), each baseline measured in the same run. The numbers
// in docs/PERFORMANCE.md come from:
//
//	go test -run '^$' -bench BenchmarkUserspaceThroughput -benchtime 5x -count 3 ./mesh/
//	go test -run '^$' -bench BenchmarkJoinFirstByte -benchtime 60x -count 3 ./mesh/
//	go test -run '^$' -bench BenchmarkIdleMember -benchtime 1x -count 3 ./mesh/
//
// The data plane alone (no service, devices configured by hand) has its own
// benchmarks in mesh/internal/netstack.

// Bytes per transfer: enough for every leg to run for about a second.
const (
	benchRawBytes   = 512 << 20
	benchOursBytes  = 128 << 20
	benchStockBytes = 32 << 20
)

// BenchmarkUserspaceThroughput streams one TCP connection between two
// userspace members joined through the service, and in the same iteration
// over raw loopback TCP and over a pair of stock wireguard-go tun/netstack
// devices configured by hand (standard bind, same MTU). It reports the
// medians over the iterations of each rate and of the per-iteration ratios
// ours/raw and ours/stock, and the CPU time each leg spends per MiB.
func BenchmarkUserspaceThroughput(b *testing.B) {
	s := meshtest.NewServer(b)
	a, dst := meshtest.Join(b, s), meshtest.Join(b, s)
	meshtest.WaitPeers(b, a, 1)
	meshtest.WaitPeers(b, dst, 1)
	ln, err := dst.Listen("tcp", ":9000")
	require.NoError(b, err)
	defer ln.Close()
	to := netip.AddrPortFrom(dst.Addr(), 9000).String()
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return a.Dial(ctx, "tcp", to)
	}
	stock := nsbench.NewStockPair(b, mesh.DefaultMTU)
	defer stock.Close()
	// Warm up both tunnels: handshakes and buffer pools are not what is measured.
	nsbench.Stream(b, dial, ln, 4<<20)
	stock.Stream(b, 4<<20)

	var raw, stk, ours, toRaw, toStock, rawCPU, stockCPU, oursCPU []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := nsbench.Raw(b, benchRawBytes)
		s := stock.Stream(b, benchStockBytes)
		o := nsbench.Stream(b, dial, ln, benchOursBytes)
		raw, stk, ours = append(raw, r.MBps), append(stk, s.MBps), append(ours, o.MBps)
		rawCPU, stockCPU, oursCPU = append(rawCPU, r.CPUPerMiB), append(stockCPU, s.CPUPerMiB), append(oursCPU, o.CPUPerMiB)
		toRaw, toStock = append(toRaw, o.MBps/r.MBps), append(toStock, o.MBps/s.MBps)
	}
	med := nsbench.Median
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(raw), "raw_MB/s")
	b.ReportMetric(med(stk), "stock_MB/s")
	b.ReportMetric(med(ours), "ours_MB/s")
	b.ReportMetric(med(toRaw), "ours/raw")
	b.ReportMetric(med(toStock), "ours/stock")
	b.ReportMetric(med(rawCPU), "raw_cpu_ms/MiB")
	b.ReportMetric(med(stockCPU), "stock_cpu_ms/MiB")
	b.ReportMetric(med(oursCPU), "ours_cpu_ms/MiB")
}

// minJoins is the least number of joins BenchmarkJoinFirstByte times,
// whatever b.N is, so that p99 means something.
const minJoins = 50

// BenchmarkJoinFirstByte times, for max(b.N, minJoins) fresh members, from
// the call to mesh.Join until the first byte echoed by a service on another
// member that is already running: registration, the first peer snapshot,
// the device coming up, the WireGuard handshake, the TCP handshake and one
// round trip. Each new member is closed and deleted from the service before
// the next one joins, so every join meets the same mesh (the echo member).
// It reports p50 and p99 of that time and of Join alone.
func BenchmarkJoinFirstByte(b *testing.B) {
	s := meshtest.NewServer(b)
	echo := meshtest.Join(b, s)
	ln, err := echo.Listen("tcp", ":7")
	require.NoError(b, err)
	defer ln.Close()
	go serveEcho(ln)
	to := netip.AddrPortFrom(echo.Addr(), 7).String()

	joins := max(b.N, minJoins)
	var firstByte, joined []float64
	slow := 0 // joins over a second: a handshake initiation lost, retried by WireGuard after 5s
	b.ResetTimer()
	for i := 0; i < joins; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		n, err := mesh.Join(ctx, s.URL, mesh.WithToken(s.Token), mesh.WithHostname(fmt.Sprintf("joiner-%d", i)))
		require.NoError(b, err)
		tJoin := time.Since(start)
		c, err := n.Dial(ctx, "tcp", to)
		require.NoError(b, err)
		_, err = c.Write([]byte{42})
		require.NoError(b, err)
		got := make([]byte, 1)
		_, err = io.ReadFull(c, got)
		require.NoError(b, err)
		tFirst := time.Since(start)
		require.Equal(b, byte(42), got[0])
		if tFirst > time.Second {
			slow++
		}
		firstByte = append(firstByte, float64(tFirst)/float64(time.Millisecond))
		joined = append(joined, float64(tJoin)/float64(time.Millisecond))

		b.StopTimer()
		require.NoError(b, c.Close())
		require.NoError(b, n.Close()) // ephemeral (no state dir): Close deletes it
		meshtest.WaitPeers(b, echo, 0)
		cancel()
		b.StartTimer()
	}
	sorted := slices.Sorted(slices.Values(firstByte))
	b.Logf("slowest first bytes (ms): %.1f", sorted[len(sorted)-5:])
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(joins), "joins")
	b.ReportMetric(float64(slow), "joins_over_1s")
	b.ReportMetric(nsbench.Quantile(firstByte, 0.5), "p50_first_byte_ms")
	b.ReportMetric(nsbench.Quantile(firstByte, 0.99), "p99_first_byte_ms")
	b.ReportMetric(nsbench.Quantile(joined, 0.5), "p50_join_ms")
	b.ReportMetric(nsbench.Quantile(joined, 0.99), "p99_join_ms")
}

// serveEcho echoes every connection accepted on ln until ln is closed.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// idleHeapProfile, when set, makes BenchmarkIdleMember write a heap
// profile of each settled idle mesh to PATH.zoneN[.trim] (before the
// members close).
var idleHeapProfile = flag.String("idleheap.profile", "", "write the idle mesh's heap profile to this path (.zoneN appended)")

func writeHeapProfile(tb testing.TB, path string) {
	tb.Helper()
	f, err := os.Create(path)
	require.NoError(tb, err)
	defer f.Close()
	runtime.GC()
	require.NoError(tb, pprof.Lookup("heap").WriteTo(f, 0))
}

// idleMembers is the number of members BenchmarkIdleMember runs at once.
const idleMembers = 100

// idlePingWindow is how long BenchmarkIdleMember counts the settled
// mesh's probes (after measuring its heap).
const idlePingWindow = 20 * time.Second

// BenchmarkIdleMember runs idleMembers userspace members in one process
// and reports the growth of the heap in use, once settled, divided by the
// number of members. The service's share per member (its watch stream and
// connection) is included: it runs in the same process. Sub-benchmarks:
//
//   - zone_size=100/trim=on: all members in one zone with idle peers
//     trimmed (see mesh/trim.go), measured once every member has trimmed
//     every peer: the steady state of an idle full mesh. A member gets
//     there after DefaultPeerIdleTimeout plus the session age (about 5
//     minutes); the benchmark shortens both (idle 2 s, any session age), so
//     some pairs are trimmed before their first handshake.
//   - zone_size=100/trim=off: the same zone (a full mesh, each member has
//     99 peers) without trimming, measured once every member
//     has completed a handshake with every peer (the steady state: a
//     keepalive staged for a handshake in progress holds a message buffer).
//     The baseline, and what an idle full mesh costs in its first minutes.
//   - zone_size=2: 50 zones of 2 members (one peer each), with handshakes.
func BenchmarkIdleMember(b *testing.B) {
	for _, v := range []struct {
		name     string
		zoneSize int
		trim     bool
	}{
		{"zone_size=100/trim=on", idleMembers, true},
		{"zone_size=100/trim=off", idleMembers, false},
		{"zone_size=2", 2, false},
	} {
		b.Run(v.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				per, settle, pings := idleHeap(b, v.zoneSize, v.trim)
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(per, "MiB/member")
				b.ReportMetric(pings, "pings/s/member")
				if v.trim {
					b.ReportMetric(settle.Seconds(), "all_trimmed_s")
				} else {
					b.ReportMetric(settle.Seconds(), "full_mesh_s")
				}
			}
		})
	}
}

// idleHeap measures idleMembers members in zones of zoneSize members; it
// returns the heap growth per member in MiB, the time from the first join
// until every zone was a full mesh with handshakes (trim: until every
// member had trimmed every peer), and the pings per second per member of
// the settled mesh (over idlePingWindow).
func idleHeap(b *testing.B, zoneSize int, trim bool) (float64, time.Duration, float64) {
	s := meshtest.NewServer(b)
	defer s.Stop()
	tokens := map[string]string{}
	for z := 0; z < idleMembers/zoneSize; z++ {
		name := fmt.Sprintf("idle-%d", z)
		s.CreateZone(b, name)
		tokens[name] = s.CreateToken(b, name)
	}
	opt := mesh.WithPeerIdleTimeout(0)
	if trim {
		defer mesh.SetTrimSessionAge(0)()
		opt = mesh.WithPeerIdleTimeout(2 * time.Second)
	}
	base := nsbench.SettledHeap()
	start := time.Now()
	zones := make([][]*mesh.Node, idleMembers/zoneSize)
	for j := 0; j < idleMembers; j++ {
		z := j / zoneSize
		name := fmt.Sprintf("idle-%d", z)
		zones[z] = append(zones[z], joinPatiently(b, s, mesh.WithToken(tokens[name]), mesh.WithZone(name),
			mesh.WithHostname(fmt.Sprintf("idle-%d-%d", z, j)), opt))
	}
	for _, nodes := range zones {
		if trim {
			waitAllTrimmed(b, nodes, 3*time.Minute)
		} else {
			waitFullMesh(b, nodes, 2*time.Minute)
		}
	}
	settle := time.Since(start)
	per := float64(nsbench.SettledHeap()-base) / idleMembers / (1 << 20)
	// The probes of the settled mesh, per member (the bind's pings, its
	// CPU and the buffers they cost).
	pings := func() (sum uint64) {
		for _, nodes := range zones {
			for _, n := range nodes {
				sum += mesh.PingsSent(n)
			}
		}
		return sum
	}
	p0, t0 := pings(), time.Now()
	time.Sleep(idlePingWindow)
	pingRate := float64(pings()-p0) / time.Since(t0).Seconds() / idleMembers
	if *idleHeapProfile != "" {
		name := fmt.Sprintf("%s.zone%d", *idleHeapProfile, zoneSize)
		if trim {
			name += ".trim"
		}
		writeHeapProfile(b, name)
	}
	for _, nodes := range zones {
		for _, n := range nodes {
			require.NoError(b, n.Close())
		}
	}
	return per, settle, pingRate
}

// joinPatiently is meshtest.Join with a longer timeout: a hundred members
// handshaking with each other on a loaded 2-core machine can keep the
// service from answering a registration within meshtest.JoinTimeout.
func joinPatiently(b *testing.B, s *meshtest.Server, opts ...mesh.Option) *mesh.Node {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n, err := mesh.Join(ctx, s.URL, append([]mesh.Option{mesh.WithToken(s.Token)}, opts...)...)
	require.NoError(b, err)
	b.Cleanup(func() { n.Close() })
	return n
}

// waitAllTrimmed waits until each node knows len(nodes)-1 peers and has
// trimmed every one of them.
func waitAllTrimmed(tb testing.TB, nodes []*mesh.Node, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		for {
			st := n.Status()
			done := len(st.Peers) == len(nodes)-1
			for _, p := range st.Peers {
				done = done && p.Trimmed
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("not every peer trimmed after %v: %s has %d peers", timeout, st.Self.Hostname, len(st.Peers))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// waitFullMesh waits until each node knows len(nodes)-1 peers and has
// completed a handshake with every one of them.
func waitFullMesh(tb testing.TB, nodes []*mesh.Node, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for _, n := range nodes {
		for {
			st := n.Status()
			done := len(st.Peers) == len(nodes)-1
			for _, p := range st.Peers {
				done = done && !p.LastHandshake.IsZero()
			}
			if done {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("no full mesh after %v: %s has %d peers", timeout, st.Self.Hostname, len(st.Peers))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
