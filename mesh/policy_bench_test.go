package mesh_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
	"github.com/wiremesh/wiremesh/meshtest"
)

// BenchmarkUserspaceFilterThroughput measures what the inbound filter
// costs a userspace TCP stream: two pairs of members stream in turn in the
// same run, one pair in a zone without a policy, the other in a zone whose
// policy allows only that stream (both members then enforce a filter).
// It reports both rates and their ratio (filtered/open, 1 = free).
func BenchmarkUserspaceFilterThroughput(b *testing.B) {
	s := meshtest.NewServer(b)
	s.CreateZone(b, "lab")
	pair := func(opts ...mesh.Option) (func() (net.Conn, error), net.Listener, *mesh.Node) {
		a := meshtest.Join(b, s, append(opts, mesh.WithHostname("a"))...)
		dst := meshtest.Join(b, s, append(opts, mesh.WithHostname("dst"))...)
		meshtest.WaitPeers(b, a, 1)
		meshtest.WaitPeers(b, dst, 1)
		ln, err := dst.Listen("tcp", ":9000")
		require.NoError(b, err)
		b.Cleanup(func() { ln.Close() })
		to := netip.AddrPortFrom(dst.Addr(), 9000).String()
		return func() (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return a.Dial(ctx, "tcp", to)
		}, ln, dst
	}
	openDial, openLn, _ := pair()
	labDial, labLn, labDst := pair(mesh.WithToken(s.CreateToken(b, "lab")), mesh.WithZone("lab"))
	_, err := s.AdminClient(b).SetPolicy(context.Background(), "lab",
		[]byte(`{"rules": [{"from": ["a"], "to": ["dst:9000"], "proto": "tcp"}]}`))
	require.NoError(b, err)
	meshtest.WaitFor(b, "the filter", func() bool { return labDst.Status().Filter.Active })
	nsbench.Stream(b, openDial, openLn, 4<<20)
	nsbench.Stream(b, labDial, labLn, 4<<20)

	var open, filtered, ratio []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		o := nsbench.Stream(b, openDial, openLn, benchOursBytes)
		f := nsbench.Stream(b, labDial, labLn, benchOursBytes)
		open, filtered, ratio = append(open, o.MBps), append(filtered, f.MBps), append(ratio, f.MBps/o.MBps)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(nsbench.Median(open), "open_MB/s")
	b.ReportMetric(nsbench.Median(filtered), "filtered_MB/s")
	b.ReportMetric(nsbench.Median(ratio), "filtered/open")
	require.Positive(b, labDst.Status().Filter.Rules[0].Accepted)
}
