package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/netlab"
	"github.com/wiremesh/wiremesh/mesh"
)

// joinsPerLeg is how many joins each setup leg measures per iteration.
const joinsPerLeg = 12

// BenchmarkNATPaths measures what NAT traversal costs, against the direct
// path measured in the same run, with kernel-mode members in namespaces:
//
//   - setup: a member joins (process start) and its first ping to a
//     running member comes back (the first ping starts the handshake;
//     replies are waited for 1 s, then the next ping goes). Leg "public":
//     both members on the WAN; leg "nat": each behind its own
//     endpoint-independent NAT (hole punching). Joins alternate between
//     the legs; every join is a new device on a new port. Reported:
//     p50/p99 of each leg and the ratios nat/public.
//   - throughput: iperf3 (one TCP stream) between two members behind
//     endpoint-independent NATs (direct path) and two behind symmetric
//     NATs (relay), interleaved; reported: the medians and relay/direct.
//
// It needs root and iperf3:
//
//	go test -run '^$' -bench NATPaths -benchtime 1x -count 3 ./e2e/
func BenchmarkNATPaths(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3: not found on PATH (Debian: apt-get install iperf3)")
	}
	lab := newWANLab(b, "--stun-listen=192.0.2.1:3478")
	l, wan, bin, svc := lab.Lab, lab.wan, lab.bin, lab.svc

	pubA, pubB := l.Host("pub-a"), l.Host("pub-b")
	l.Connect(pubA, wan, pfx("192.0.2.51/24"))
	l.Connect(pubB, wan, pfx("192.0.2.52/24"))
	eiA, _ := behindNAT(l, wan, "ei-a", 1, netlab.NATEndpointIndependent)
	eiB, _ := behindNAT(l, wan, "ei-b", 2, netlab.NATEndpointIndependent)
	symA, _ := behindNAT(l, wan, "sym-a", 3, netlab.NATSymmetric)
	symB, _ := behindNAT(l, wan, "sym-b", 4, netlab.NATSymmetric)

	running := map[*netlab.Host]*agent{}
	for _, h := range []*netlab.Host{pubA, eiA, symA, symB} {
		running[h] = startAgent(b, bin, svc, h, b.TempDir())
	}

	var public, nat []float64
	port := 52000
	for i := 0; i < b.N*joinsPerLeg; i++ {
		for _, leg := range []struct {
			from, to *netlab.Host
			out      *[]float64
		}{{pubB, pubA, &public}, {eiB, eiA, &nat}} {
			port++
			d := timeJoinToPing(b, bin, svc, leg.from, running[leg.to], port)
			*leg.out = append(*leg.out, d.Seconds()*1000)
		}
	}
	b.Logf("join to first ping reply, ms: public %v, nat %v", rounded(public), rounded(nat))

	// Throughput: a direct pair behind NATs, and a relayed pair.
	direct := startAgent(b, bin, svc, eiB, b.TempDir())
	waitPathB(b, bin, direct, running[eiA].name, mesh.PathDirect)
	waitPathB(b, bin, running[symA], running[symB].name, mesh.PathRelay)
	iperf(b, eiB, eiA, running[eiA].addr.String(), warmupSeconds)
	iperf(b, symA, symB, running[symB].addr.String(), warmupSeconds)
	var dRate, rRate, ratio []float64
	for i := 0; i < b.N*benchRounds; i++ {
		d := iperf(b, eiB, eiA, running[eiA].addr.String(), iperfSeconds) / 1e6
		r := iperf(b, symA, symB, running[symB].addr.String(), iperfSeconds) / 1e6
		b.Logf("round %d: direct %.0f, relay %.0f Mbit/s", i+1, d, r)
		dRate, rRate, ratio = append(dRate, d), append(rRate, r), append(ratio, r/d)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(percentile(public, 50), "public_p50_ms")
	b.ReportMetric(percentile(public, 99), "public_p99_ms")
	b.ReportMetric(percentile(nat, 50), "nat_p50_ms")
	b.ReportMetric(percentile(nat, 99), "nat_p99_ms")
	b.ReportMetric(percentile(nat, 50)/percentile(public, 50), "nat/public_p50")
	b.ReportMetric(percentile(nat, 99)/percentile(public, 99), "nat/public_p99")
	b.ReportMetric(median(dRate), "direct_Mbps")
	b.ReportMetric(median(rRate), "relay_Mbps")
	b.ReportMetric(median(ratio), "relay/direct")
}

// timeJoinToPing starts a new member in h on port and returns the time
// from its start to the first ping reply from to; then stops it.
func timeJoinToPing(b *testing.B, bin string, s *service, h *netlab.Host, to *agent, port int) time.Duration {
	b.Helper()
	dir := b.TempDir()
	start := time.Now()
	args := []string{"--token", s.token, "--insecure-http", "--hostname", fmt.Sprintf("%s-%d", h.Name(), port),
		"--state-dir", dir, "--socket", filepath.Join(dir, "s.sock"), "--listen-port", fmt.Sprint(port), s.url}
	if os.Getenv("WIREMESH_E2E_VERBOSE") != "" {
		args = append([]string{"-v"}, args...)
	}
	p := h.Start(b, bin, args...)
	p.WaitFor(b, "joined zone", startTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	if err := h.Ping(ctx, to.addr); err != nil {
		b.Fatalf("%s cannot ping %s: %v\n%s", h.Name(), to.name, err, p.Output())
	}
	d := time.Since(start)
	if d > 2*time.Second && os.Getenv("WIREMESH_E2E_VERBOSE") != "" {
		f := filepath.Join(os.TempDir(), fmt.Sprintf("wiremesh-slowjoin-%d", port))
		_ = os.WriteFile(f+"-joiner.log", []byte(p.Output()), 0o600)
		_ = os.WriteFile(f+"-peer.log", []byte(to.proc.Output()), 0o600)
		b.Logf("slow join (%v) from %s: logs in %s-*.log", d, h.Name(), f)
	}
	if err := p.Stop(); err != nil {
		b.Fatalf("stop: %v", err)
	}
	return d
}

func waitPathB(b *testing.B, bin string, a *agent, peer, want string) {
	b.Helper()
	deadline := time.Now().Add(probeTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	var last string // the last status read, for the failure message
	for {
		out, err := a.host.Run(ctx, bin, "status", "--json", "--socket", a.socket)
		var st natStatus // the documented format (docs/STATUS-JSON.md)
		if err == nil {
			last = string(out)
			if json.Unmarshal(out, &st) == nil {
				for _, p := range st.Peers {
					if p.Hostname == peer && p.Path != nil && *p.Path == want {
						return
					}
				}
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no %s path to %s:\n%s", a.name, want, peer, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// percentile returns the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func rounded(xs []float64) []int {
	out := make([]int, len(xs))
	for i, x := range xs {
		out[i] = int(x + 0.5)
	}
	return out
}
