package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// iperfSeconds is the length of one iperf3 measurement.
const iperfSeconds = 5

// BenchmarkKernelThroughput measures TCP throughput between two
// kernel-mode members, each in its own network namespace, joined by a veth
// pair, and reports it as a ratio to the bare veth measured in the same
// run (metric "mesh/veth"), with both in Mbit/s. It needs root and iperf3
// (Debian: apt-get install iperf3; .ci/run installs it):
//
//	go test -run '^$' -bench KernelThroughput -benchtime 1x ./e2e/
func BenchmarkKernelThroughput(b *testing.B) {
	netlab.RequireRoot(b)
	netlab.RequireTUN(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3: not found on PATH (Debian: apt-get install iperf3); skipping the kernel-mode throughput benchmark")
	}
	bin := netlab.BuildBinary(b, wiremeshPkg)
	l := netlab.New(b)
	ha, hb := l.Host("a"), l.Host("b")
	l.Wire(ha, pfx("10.0.0.1/24"), hb, pfx("10.0.0.2/24"))

	svc := ha.Start(b, bin, "serve", "--insecure-http", "--listen=10.0.0.1:8443", "--stun-listen=off", "--data-dir", b.TempDir())
	m := regexp.MustCompile(`--token (\S+) (\S+)`).FindStringSubmatch(svc.WaitFor(b, "wiremesh join --token", startTimeout))
	if m == nil {
		b.Fatalf("no join token in the service output:\n%s", svc.Output())
	}
	token, url := m[1], m[2]
	join := func(h *netlab.Host) netip.Addr {
		dir := b.TempDir()
		p := h.Start(b, bin, "--token", token, "--insecure-http", "--hostname", h.Name(),
			"--socket", filepath.Join(dir, "s.sock"), url)
		line := p.WaitFor(b, "joined zone", startTimeout)
		a := regexp.MustCompile(`address (\d+\.\d+\.\d+\.\d+)`).FindStringSubmatch(line)
		if a == nil {
			b.Fatalf("no address in %q", line)
		}
		return addr(a[1])
	}
	join(ha)
	tunB := join(hb)
	hb.Start(b, "iperf3", "-s", "--bind", "0.0.0.0")
	// Wait for the server and the tunnel.
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := ha.Ping(ctx, tunB); err != nil {
		b.Fatalf("no tunnel: %v", err)
	}

	var veth, mesh float64
	for i := 0; i < b.N; i++ {
		veth += iperf(b, ha, "10.0.0.2")
		mesh += iperf(b, ha, tunB.String())
	}
	veth /= float64(b.N)
	mesh /= float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(veth/1e6, "veth-Mbit/s")
	b.ReportMetric(mesh/1e6, "mesh-Mbit/s")
	b.ReportMetric(mesh/veth, "mesh/veth")
}

// iperf runs one iperf3 TCP test from h to server and returns the received
// bits per second. The server may need a moment to start: it retries for
// a few seconds.
func iperf(b *testing.B, h *netlab.Host, server string) float64 {
	b.Helper()
	type result struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	deadline := time.Now().Add(probeTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), (iperfSeconds+20)*time.Second)
		out, err := h.Run(ctx, "iperf3", "-c", server, "-t", fmt.Sprint(iperfSeconds), "-J")
		cancel()
		var r result
		if jerr := json.Unmarshal(out, &r); jerr != nil && err == nil {
			err = jerr
		}
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		if err == nil && r.End.SumReceived.BitsPerSecond > 0 {
			return r.End.SumReceived.BitsPerSecond
		}
		if time.Now().After(deadline) {
			b.Fatalf("iperf3 to %s: %v\n%s", server, err, out)
		}
		time.Sleep(200 * time.Millisecond) // the server may still be starting
	}
}
