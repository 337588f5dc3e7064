package e2e

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// iperfSeconds is the length of one iperf3 measurement; warmupSeconds of
// one unmeasured run through each tunnel before the first.
const (
	iperfSeconds  = 5
	warmupSeconds = 2
)

// benchRounds is how many interleaved rounds (veth, stock, mesh) one
// benchmark iteration measures; the metrics are medians over all rounds.
const benchRounds = 3

// Stock wireguard-go leg: device name, UDP port and tunnel addresses
// (outside the zone's pool 100.64.0.0/16 and the veth's 10.0.0.0/24).
const (
	stockDev  = "stk0"
	stockPort = 51999
)

// BenchmarkKernelThroughput measures TCP throughput between two
// kernel-mode members, each in its own network namespace, joined by a veth
// pair, against two references measured in the same run on the same veth:
// the bare veth and stock wireguard-go (e2e/internal/stockwg: tun.CreateTUN
// + conn.NewDefaultBind, as the wireguard-go daemon does) between the same
// namespaces. Legs are interleaved (veth, stock, mesh, repeated) so load
// drift hits them equally. It reports the median Mbit/s of each leg
// (veth_Mbps, stock_Mbps, mesh_Mbps) and the medians of the per-round
// ratios mesh/veth and mesh/stock. It needs root and iperf3 (Debian:
// apt-get install iperf3; .ci/run installs it):
//
//	go test -run '^$' -bench KernelThroughput -benchtime 1x -count 3 ./e2e/
func BenchmarkKernelThroughput(b *testing.B) {
	netlab.RequireRoot(b)
	netlab.RequireTUN(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3: not found on PATH (Debian: apt-get install iperf3); skipping the kernel-mode throughput benchmark")
	}
	bin := netlab.BuildBinary(b, wiremeshPkg)
	stockBin := netlab.BuildBinary(b, "./internal/stockwg")
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
			"--socket", filepath.Join(dir, "s.sock"), "--state-dir", filepath.Join(dir, "state"), url)
		line := p.WaitFor(b, "joined zone", startTimeout)
		a := regexp.MustCompile(`address (\d+\.\d+\.\d+\.\d+)`).FindStringSubmatch(line)
		if a == nil {
			b.Fatalf("no address in %q", line)
		}
		return addr(a[1])
	}
	join(ha)
	tunB := join(hb)
	stockB := startStock(b, stockBin, ha, hb, "10.0.0", pfx("10.78.0.1/24"), pfx("10.78.0.2/24"))
	// Wait for both tunnels, then warm them up (the first seconds through
	// a fresh device are slower: buffer pools, TCP metrics) unmeasured.
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	for _, dst := range []netip.Addr{tunB, stockB} {
		if err := ha.Ping(ctx, dst); err != nil {
			b.Fatalf("no tunnel to %s: %v", dst, err)
		}
		iperf(b, ha, hb, dst.String(), warmupSeconds)
	}

	var veth, stock, mesh, meshVeth, meshStock []float64
	for i := 0; i < b.N*benchRounds; i++ {
		v := iperf(b, ha, hb, "10.0.0.2", iperfSeconds) / 1e6
		s := iperf(b, ha, hb, stockB.String(), iperfSeconds) / 1e6
		w := iperf(b, ha, hb, tunB.String(), iperfSeconds) / 1e6
		b.Logf("round %d: veth %.0f, stock %.0f, mesh %.0f Mbit/s", i+1, v, s, w)
		veth, stock, mesh = append(veth, v), append(stock, s), append(mesh, w)
		meshVeth, meshStock = append(meshVeth, w/v), append(meshStock, w/s)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(veth), "veth_Mbps")
	b.ReportMetric(median(stock), "stock_Mbps")
	b.ReportMetric(median(mesh), "mesh_Mbps")
	b.ReportMetric(median(meshVeth), "mesh/veth")
	b.ReportMetric(median(meshStock), "mesh/stock")
}

// startStock runs stock wireguard-go (e2e/internal/stockwg) in ha and hb,
// peered over the veth addresses vethNet.1 and vethNet.2, with tunnel
// addresses aAddr and bAddr on stockDev, and returns hb's tunnel address.
// A cleanup stops both and checks that they removed their TUN devices.
func startStock(b *testing.B, bin string, ha, hb *netlab.Host, vethNet string, aAddr, bAddr netip.Prefix) netip.Addr {
	b.Helper()
	privA, pubA := wgKey(b)
	privB, pubB := wgKey(b)
	run := func(h *netlab.Host, priv, peerPub, peerIP string, self, peer netip.Prefix) {
		p := h.Start(b, bin, "-name", stockDev, "-private-key", priv,
			"-listen-port", fmt.Sprint(stockPort), "-peer-public-key", peerPub,
			"-endpoint", fmt.Sprintf("%s:%d", peerIP, stockPort),
			"-allowed-ips", netip.PrefixFrom(peer.Addr(), 32).String())
		p.WaitFor(b, "stockwg: up", startTimeout)
		h.AddAddr(stockDev, self)
		h.MustRun(b, "ip", "link", "set", stockDev, "up")
		b.Cleanup(func() {
			if err := p.Stop(); err != nil {
				b.Errorf("stop stock wireguard-go in %s: %v\n%s", h.Name(), err, p.Output())
			}
			if slices.Contains(h.Links(), stockDev) {
				b.Errorf("stock wireguard-go left %s behind in %s", stockDev, h.Name())
			}
		})
	}
	run(ha, privA, pubB, vethNet+".2", aAddr, bAddr)
	run(hb, privB, pubA, vethNet+".1", bAddr, aAddr)
	return bAddr.Addr()
}

// wgKey returns a new X25519 key pair, base64 as wg(8) prints it.
func wgKey(b *testing.B) (priv, pub string) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		b.Fatalf("generate key: %v", err)
	}
	enc := base64.StdEncoding.EncodeToString
	return enc(k.Bytes()), enc(k.PublicKey().Bytes())
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// iperf runs one iperf3 TCP test of the given length from client to a
// one-off iperf3 server started in srv and listening on all of srv's
// addresses, and returns the received bits per second. The server may need
// a moment to start: it retries for a few seconds. The server exits after
// the test.
func iperf(b *testing.B, client, srv *netlab.Host, dst string, seconds int) float64 {
	b.Helper()
	type result struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	server := srv.Start(b, "iperf3", "-s", "-1", "--bind", "0.0.0.0")
	deadline := time.Now().Add(probeTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(seconds+20)*time.Second)
		out, err := client.Run(ctx, "iperf3", "-c", dst, "-t", fmt.Sprint(seconds), "-J")
		cancel()
		var r result
		if jerr := json.Unmarshal(out, &r); jerr != nil && err == nil {
			err = jerr
		}
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		if err == nil && r.End.SumReceived.BitsPerSecond > 0 {
			select {
			case <-server.Done():
			case <-time.After(probeTimeout):
				b.Fatalf("one-off iperf3 server in %s still running %v after its test:\n%s", srv.Name(), probeTimeout, server.Output())
			}
			return r.End.SumReceived.BitsPerSecond
		}
		if time.Now().After(deadline) {
			b.Fatalf("iperf3 to %s: %v\n%s", dst, err, out)
		}
		time.Sleep(200 * time.Millisecond) // the server may still be starting
	}
}
