package mesh_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// TestStatsReachTheService: members report each peer's path, handshake
// and bytes, and the admin API shows them; a member that leaves takes its
// report along and drops out of the others'.
func TestStatsReachTheService(t *testing.T) {
	s := meshtest.NewServer(t)
	fast := mesh.WithStatsInterval(300*time.Millisecond, 50*time.Millisecond)
	a := meshtest.Join(t, s, mesh.WithHostname("a"), fast)
	b := meshtest.Join(t, s, mesh.WithHostname("b"), fast)
	meshtest.WaitPeers(t, a, 1)
	meshtest.WaitPeers(t, b, 1)
	_, err := a.Ping(ctxT(t), b.Addr())
	require.NoError(t, err)
	_, err = b.Ping(ctxT(t), a.Addr())
	require.NoError(t, err)

	admin := s.AdminClient(t)
	idA, idB := a.Status().Self.DeviceID, b.Status().Self.DeviceID
	var got api.Device
	meshtest.WaitFor(t, "a's report of b: direct, a handshake, bytes both ways", func() bool {
		d, err := admin.Device(ctxT(t), idA)
		require.NoError(t, err)
		got = d
		if d.Stats == nil || len(d.Stats.Peers) != 1 {
			return false
		}
		p := d.Stats.Peers[0]
		return p.Path == api.PathDirect && !p.LastHandshake.IsZero() && p.RxBytes > 0 && p.TxBytes > 0
	})
	p := got.Stats.Peers[0]
	require.Equal(t, idB, p.DeviceID)
	require.WithinDuration(t, time.Now(), p.LastHandshake, time.Minute)
	require.WithinDuration(t, time.Now(), got.Stats.ReportedAt, time.Minute)

	require.NoError(t, b.Close()) // ephemeral: its device is deleted
	_, err = admin.Device(ctxT(t), idB)
	require.ErrorContains(t, err, "not_found")
	d, err := admin.Device(ctxT(t), idA)
	require.NoError(t, err)
	require.Empty(t, d.Stats.Peers, "a deleted peer drops out of the shown report")
}

// TestStatsReportShape: the most recent handshakes first, at most
// api.MaxStatsPeers, ages in whole seconds, none without a handshake.
func TestStatsReportShape(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var peers []mesh.PeerStatus
	for i := range api.MaxStatsPeers + 10 {
		p := mesh.PeerStatus{DeviceID: fmt.Sprintf("dev_%04d", i), Path: mesh.PathRelay, RxBytes: uint64(i), TxBytes: 1}
		if i%2 == 1 {
			p.LastHandshake = now.Add(-time.Duration(i)*time.Second - 300*time.Millisecond)
		}
		peers = append(peers, p)
	}
	peers = append(peers, mesh.PeerStatus{Hostname: "no id"})
	rep, paths := mesh.StatsReport(peers, now)
	require.Len(t, rep.Peers, api.MaxStatsPeers)
	require.Len(t, paths, api.MaxStatsPeers)
	require.Equal(t, "dev_0001", rep.Peers[0].DeviceID, "the most recent handshake first")
	require.Equal(t, int64(1), *rep.Peers[0].HandshakeAgeSeconds)
	require.Equal(t, uint64(1), rep.Peers[0].RxBytes)
	require.Equal(t, mesh.PathRelay, rep.Peers[0].Path)
	last := rep.Peers[len(rep.Peers)-1]
	require.Nil(t, last.HandshakeAgeSeconds, "no handshake, no age")
	for _, p := range rep.Peers {
		require.NotEmpty(t, p.DeviceID)
	}
}

// TestStatsDue: the first report, the interval, and any change of a
// peer's path or first handshake make a report due; nothing else does.
func TestStatsDue(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hs := t0.Add(-time.Second)
	_, none := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b"}}, t0)
	_, direct := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b", Path: mesh.PathDirect}}, t0)
	_, shaken := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b", Path: mesh.PathDirect, LastHandshake: hs, RxBytes: 5}}, t0)
	_, more := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b", Path: mesh.PathDirect, LastHandshake: t0, RxBytes: 500}}, t0)
	_, relay := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b", Path: mesh.PathRelay, LastHandshake: t0}}, t0)
	_, two := mesh.StatsReport([]mesh.PeerStatus{{DeviceID: "dev_b", Path: mesh.PathRelay, LastHandshake: t0}, {DeviceID: "dev_c"}}, t0)
	for _, tc := range []struct {
		name      string
		sent, now map[string]string
		sentAt    time.Time
		elapsed   time.Duration
		want      bool
	}{
		{"first", nil, none, time.Time{}, 0, true},
		{"nothing new", direct, direct, t0, time.Second, false},
		{"interval passed", direct, direct, t0, 30 * time.Second, true},
		{"path found", none, direct, t0, time.Second, true},
		{"first handshake", direct, shaken, t0, time.Second, true},
		{"more bytes, a later handshake", shaken, more, t0, time.Second, false},
		{"to the relay", more, relay, t0, time.Second, true},
		{"a peer joined", relay, two, t0, time.Second, true},
		{"a peer left", two, relay, t0, time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, mesh.StatsDue(tc.sent, tc.now, tc.sentAt, t0.Add(tc.elapsed), 30*time.Second))
		})
	}
}
