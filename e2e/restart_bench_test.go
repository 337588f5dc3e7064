package e2e

import (
	"context"
	"testing"
	"time"
)

// BenchmarkRouterRestart measures how long a spoke behind NAT waits for a
// router to carry its traffic again after the router restarts. Each
// iteration stops the kernel-mode router (SIGTERM), starts it again with
// the same state directory and times, from the new process's start, two
// things: until it prints "joined zone" (its own start, the baseline), and
// until the spoke's ping of an address in the router's child prefix is
// answered (the spoke pings as soon as the router has joined). The router
// cannot reach the spoke through the NAT, so the spoke has to handshake
// again. It reports the medians recovery_ms and start_ms and the median
// ratio recovery/start: 1 means the spoke's traffic flows as soon as the
// router is up. It needs root:
//
//	go test -run '^$' -bench RouterRestart -benchtime 5x ./e2e/
func BenchmarkRouterRestart(b *testing.B) {
	lab := newWANLab(b)
	bin, svc := lab.bin, lab.svc
	router := lab.router("router", "192.0.2.11/24", "172.24.0.10/32")
	spoke, _ := lab.spokeBehindNAT()

	state := b.TempDir()
	ra := startAgent(b, bin, svc, router, state, "172.24.0.0/24")
	startAgent(b, bin, svc, spoke, b.TempDir())
	dst := addr("172.24.0.10")
	ping := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return spoke.Ping(ctx, dst)
	}
	if err := ping(probeTimeout); err != nil {
		b.Fatalf("spoke -> router before any restart: %v", err)
	}

	var recovery, start, ratio []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := ra.proc.Stop(); err != nil {
			b.Fatalf("stopping the router: %v\n%s", err, ra.proc.Output())
		}
		t0 := time.Now()
		ra = startAgent(b, bin, svc, router, state, "172.24.0.0/24")
		t1 := time.Now()
		if err := ping(probeTimeout); err != nil {
			b.Fatalf("spoke -> router after restart %d: %v", i, err)
		}
		r, s := time.Since(t0), t1.Sub(t0)
		recovery = append(recovery, float64(r.Milliseconds()))
		start = append(start, float64(s.Milliseconds()))
		ratio = append(ratio, r.Seconds()/s.Seconds())
	}
	b.StopTimer()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(recovery), "recovery_ms")
	b.ReportMetric(median(start), "start_ms")
	b.ReportMetric(median(ratio), "recovery/start")
	b.Logf("recovery (ms): %v; router start (ms): %v", recovery, start)
}
