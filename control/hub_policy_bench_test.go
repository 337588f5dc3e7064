package control

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// benchPolicyZone fills a store with n devices in 20 token tags and
// returns it with a policy of 100 rules between those tags (see
// policy.benchZone for the same shape).
func benchPolicyZone(b *testing.B, n int) (*store.SQLite, []store.Device, [32]byte, string) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(b.TempDir(), DBFile))
	require.NoError(b, err)
	b.Cleanup(func() { st.Close() })
	var toks [20][32]byte
	for t := range toks {
		toks[t] = sha256.Sum256([]byte(fmt.Sprint("join", t)))
		require.NoError(b, st.CreateJoinToken(ctx, store.JoinToken{ID: fmt.Sprint("jt", t), Hash: toks[t], Zone: api.DefaultZone,
			Reusable: true, Tags: []string{fmt.Sprintf("t%02d", t)}}))
	}
	devs := make([]store.Device, n)
	for i := range devs {
		d := newDevice()
		devs[i], _, err = st.Register(ctx, store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: toks[i%20],
			DeviceTokenHash: sha256.Sum256(d.pub[:]), PublicKey: store.Key(d.pub), Hostname: fmt.Sprintf("host%04d", i), Now: time.Now()})
		require.NoError(b, err)
	}
	var doc strings.Builder
	doc.WriteString(`{"tags": {`)
	for t := range 20 {
		fmt.Fprintf(&doc, `%s"t%02d": []`, map[bool]string{true: "", false: ", "}[t == 0], t)
	}
	doc.WriteString(`}, "rules": [`)
	for r := range 100 {
		if r > 0 {
			doc.WriteString(",")
		}
		fmt.Fprintf(&doc, `{"from": ["tag:t%02d"], "to": ["tag:t%02d:%d"], "proto": "tcp"}`, (r+r/20)%20, (r*7+3)%20, 1000+r)
	}
	doc.WriteString("]}")
	return st, devs, toks[0], doc.String()
}

// BenchmarkHubChange1000Watchers measures one change of membership (a
// member of a tag joins or leaves, changing views and filters) fanned out to 1,000
// watching members, with and without a policy of 100 rules; it reports the
// bytes sent per change and the ratio of the policy zone's time to the
// open zone's (the baseline, measured in the same run).
func BenchmarkHubChange1000Watchers(b *testing.B) {
	const n = 1000
	st, devs, tok, doc := benchPolicyZone(b, n)
	ctx := context.Background()
	run := func(b *testing.B) (time.Duration, float64) {
		h := newHub(st, slog.New(slog.DiscardHandler), newMetrics(), 0)
		defer h.close()
		h.buf = 1 << 16
		subs := make([]*subscriber, n)
		for i := range subs {
			s, err := h.subscribeAs(ctx, api.DefaultZone, devs[i].ID)
			require.NoError(b, err)
			subs[i] = s
		}
		var bytes, changes int
		start := time.Now()
		var joined string
		for i := 0; b.Loop(); i++ {
			if joined == "" { // a member of tag t00 joins: new peers and sources for its tag's rules
				d := newDevice()
				dev, _, err := st.Register(ctx, store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: tok,
					DeviceTokenHash: sha256.Sum256(d.pub[:]), PublicKey: store.Key(d.pub), Hostname: "new", Now: time.Now()})
				require.NoError(b, err)
				joined = dev.ID
			} else { // and leaves
				require.NoError(b, st.DeleteDevice(ctx, joined))
				joined = ""
			}
			h.updateNow(api.DefaultZone)
			changes++
			for _, s := range subs {
				evs, _ := s.take()
				for _, ev := range evs {
					bytes += len(ev.line)
				}
			}
		}
		return time.Since(start), float64(bytes) / float64(max(changes, 1))
	}
	var open time.Duration
	b.Run("open", func(b *testing.B) {
		d, per := run(b)
		open = d / time.Duration(b.N)
		b.ReportMetric(per, "B/change")
	})
	b.Run("policy", func(b *testing.B) {
		_, err := st.SetPolicy(ctx, api.DefaultZone, []byte(doc), time.Time{})
		require.NoError(b, err)
		d, per := run(b)
		b.ReportMetric(per, "B/change")
		if open > 0 {
			b.ReportMetric(float64(d/time.Duration(b.N))/float64(open), "x-open")
		}
	})
}
