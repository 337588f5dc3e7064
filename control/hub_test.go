package control

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

func newHubStore(t *testing.T) (*store.SQLite, [32]byte) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), DBFile))
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	tok := sha256.Sum256([]byte("join"))
	require.NoError(t, st.CreateJoinToken(ctx, store.JoinToken{ID: "jt1", Hash: tok, Zone: api.DefaultZone, Reusable: true, CreatedAt: time.Now()}))
	return st, tok
}

func registerDirect(t *testing.T, st store.Store, tok [32]byte, host string) store.Device {
	t.Helper()
	d := newDevice()
	dev, _, err := st.Register(context.Background(), store.RegisterParams{
		Zone: api.DefaultZone, JoinTokenHash: tok, DeviceTokenHash: sha256.Sum256(d.pub[:]),
		PublicKey: store.Key(d.pub), Hostname: host, Now: time.Now(),
	})
	require.NoError(t, err)
	return dev
}

func TestHubEncodesEachChangeOnce(t *testing.T) {
	st, tok := newHubStore(t)
	h := newHub(st, slog.New(slog.DiscardHandler), newMetrics(), 0)
	defer h.close()
	ctx := context.Background()

	const watchers, changes = 50, 10
	subs := make([]*subscriber, watchers)
	for i := range subs {
		s, err := h.subscribe(ctx, api.DefaultZone)
		require.NoError(t, err)
		subs[i] = s
	}
	var ids []string
	for i := range changes {
		ids = append(ids, registerDirect(t, st, tok, "h"+string(rune('a'+i))).ID)
		h.updateNow(api.DefaultZone)
	}
	require.EqualValues(t, changes, h.encodes.Load(), "each change encoded exactly once")
	for i := range changes {
		var first []byte
		for _, s := range subs {
			ev, ok := recvEvent(t, s)
			require.True(t, ok)
			if first == nil {
				first = ev.line
				var we api.WatchEvent
				require.NoError(t, json.Unmarshal(ev.line, &we))
				require.Equal(t, ids[i], we.Peer.ID)
				require.Equal(t, ev.rev, we.Revision)
			}
			// The very same bytes, not a copy.
			require.Same(t, &first[0], &ev.line[0])
		}
	}
	for _, s := range subs {
		require.Zero(t, pending(s))
	}
	// An update with nothing new encodes nothing.
	h.updateNow(api.DefaultZone)
	require.EqualValues(t, changes, h.encodes.Load())
}

func TestHubDropsSlowSubscriber(t *testing.T) {
	st, tok := newHubStore(t)
	m := newMetrics()
	h := newHub(st, slog.New(slog.DiscardHandler), m, 0)
	h.buf = 2
	defer h.close()
	ctx := context.Background()
	slow, err := h.subscribe(ctx, api.DefaultZone)
	require.NoError(t, err)
	fast, err := h.subscribe(ctx, api.DefaultZone)
	require.NoError(t, err)
	for i := range 3 {
		registerDirect(t, st, tok, "n"+string(rune('a'+i)))
		h.updateNow(api.DefaultZone)
		_, ok := recvEvent(t, fast)
		require.True(t, ok)
	}
	// slow got 2 events, then it was ended.
	evs, open := slow.take()
	require.Len(t, evs, 2)
	require.False(t, open)
	h.unsubscribe(slow) // safe after the drop
	h.unsubscribe(fast)
	_, ok := recvEvent(t, fast)
	require.False(t, ok)
}

func TestHubPollSeesOtherWriters(t *testing.T) {
	st, tok := newHubStore(t)
	h := newHub(st, slog.New(slog.DiscardHandler), newMetrics(), 10*time.Millisecond)
	sub, err := h.subscribe(context.Background(), api.DefaultZone)
	require.NoError(t, err)
	// Written behind the hub's back (as another replica would): the poll
	// loop picks it up.
	d := registerDirect(t, st, tok, "other")
	ev, ok := recvEvent(t, sub)
	require.True(t, ok, "poll did not deliver the change")
	var we api.WatchEvent
	require.NoError(t, json.Unmarshal(ev.line, &we))
	require.Equal(t, d.ID, we.Peer.ID)
	h.close()
	_, ok = recvEvent(t, sub)
	require.False(t, ok, "close ends subscriptions")
	_, err = h.subscribe(context.Background(), api.DefaultZone)
	require.ErrorIs(t, err, errHubClosed)
}

// recvEvent waits up to 10 s for sub's next event; ok is false when sub
// ended with nothing queued.
func recvEvent(t testing.TB, sub *subscriber) (hubEvent, bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		sub.mu.Lock()
		if len(sub.queue) > 0 {
			ev := sub.queue[0]
			sub.queue = sub.queue[1:]
			sub.mu.Unlock()
			return ev, true
		}
		ended := sub.ended
		sub.mu.Unlock()
		if ended {
			return hubEvent{}, false
		}
		select {
		case <-sub.wake:
		case <-deadline:
			t.Fatal("no hub event within 10 s")
		}
	}
}

// pending is how many events are queued for sub.
func pending(sub *subscriber) int {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return len(sub.queue)
}
