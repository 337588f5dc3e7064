package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// stream is an open watch stream.
type stream struct {
	t      testing.TB
	events chan api.WatchEvent
	// presence receives the presence events, kept off events so that
	// tests about peer changes see only those.
	presence chan api.WatchEvent
	// done is closed when the stream has ended, after every event read
	// before the end was queued on events; err is why it ended (nil: EOF).
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

func (e *env) watch(zone, token string, since int64) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	url := fmt.Sprintf("%s/v1/zones/%s/watch", e.ts.URL, zone)
	if since > 0 {
		url += fmt.Sprintf("?since=%d", since)
	}
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := e.ts.Client().Do(req)
	require.NoError(e.t, err)
	require.Equal(e.t, http.StatusOK, resp.StatusCode)
	require.Equal(e.t, "application/x-ndjson", resp.Header.Get("Content-Type"))
	s := &stream{t: e.t, events: make(chan api.WatchEvent, 1024), presence: make(chan api.WatchEvent, 1024),
		done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev api.WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				s.err = err
				return
			}
			if ev.Type == api.EventPresence {
				select {
				case s.presence <- ev:
				default: // a test that does not read them
				}
				continue
			}
			s.events <- ev
		}
		s.err = sc.Err()
	}()
	e.t.Cleanup(cancel)
	return s
}

// next returns the next event that is not a heartbeat.
func (s *stream) next() api.WatchEvent {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-s.events:
			if ev.Type != api.EventHeartbeat {
				return ev
			}
		case <-s.done:
			// select picks at random among ready cases: the events the
			// server sent before it ended the stream come first.
			select {
			case ev := <-s.events:
				if ev.Type != api.EventHeartbeat {
					return ev
				}
				continue
			default:
			}
			s.t.Fatalf("watch stream ended: %v", s.err)
		case <-deadline:
			s.t.Fatal("no watch event within 10s")
		}
	}
}

// quiet asserts no change event is pending (after the hub had a chance to
// deliver what was committed: callers mutate synchronously through the API,
// which fans out before it answers).
func (s *stream) quiet() {
	s.t.Helper()
	for {
		select {
		case ev := <-s.events:
			require.Equal(s.t, api.EventHeartbeat, ev.Type, "unexpected event %+v", ev)
		default:
			return
		}
	}
}

func TestWatchSnapshotAndLive(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a", "172.24.0.0/24")
	_, b := e.mustRegister(tok, "b")

	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	snap := s.next()
	require.Equal(t, api.EventSnapshot, snap.Type)
	require.Len(t, snap.Peers, 2)
	require.Greater(t, snap.Revision, int64(0))

	_, c := e.mustRegister(tok, "c", "172.28.0.0/24")
	ev := s.next()
	require.Equal(t, api.EventUpsert, ev.Type)
	require.Equal(t, c.DeviceID, ev.Peer.ID)
	require.Greater(t, ev.Revision, snap.Revision)

	code, ae := e.call("DELETE", "/v1/devices/"+b.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae, code)
	rm := s.next()
	require.Equal(t, api.EventRemove, rm.Type)
	require.Equal(t, b.DeviceID, rm.Peer.ID)
	require.Greater(t, rm.Revision, ev.Revision)

	code, ae = e.call("DELETE", "/v1/zones/default/prefixes/172.28.0.0/24", e.admin, nil, nil)
	require.Nil(t, ae, code)
	up := s.next()
	require.Equal(t, api.EventUpsert, up.Type)
	require.Equal(t, c.DeviceID, up.Peer.ID)
	require.Empty(t, up.Peer.ChildPrefixes)
	s.quiet()
}

func TestWatchResumeGetsExactlyWhatWasMissed(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	last := s.next().Revision
	s.cancel()

	// Changes while disconnected.
	_, b := e.mustRegister(tok, "b")
	_, c := e.mustRegister(tok, "c")
	_, ae := e.call("DELETE", "/v1/devices/"+b.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae)

	s2 := e.watch(api.DefaultZone, a.DeviceToken, last)
	want := []struct{ typ, id string }{{api.EventUpsert, b.DeviceID}, {api.EventUpsert, c.DeviceID}, {api.EventRemove, b.DeviceID}}
	rev := last
	for _, w := range want {
		ev := s2.next()
		require.Equal(t, w.typ, ev.Type)
		require.Equal(t, w.id, ev.Peer.ID)
		require.Greater(t, ev.Revision, rev)
		rev = ev.Revision
	}
	s2.quiet()
	// Then live.
	_, d := e.mustRegister(tok, "d")
	ev := s2.next()
	require.Equal(t, d.DeviceID, ev.Peer.ID)
	s2.quiet()

	// A revision the store never issued gives a fresh snapshot.
	s3 := e.watch(api.DefaultZone, a.DeviceToken, 1<<40)
	snap := s3.next()
	require.Equal(t, api.EventSnapshot, snap.Type)
	require.Len(t, snap.Peers, 3)
}

func TestWatchZoneIsolation(t *testing.T) {
	e := newEnv(t)
	e.createZone("zone-a", false)
	e.createZone("zone-b", false)
	_, a := e.mustRegister(e.joinToken("zone-a", false), "a")
	_, b := e.mustRegister(e.joinToken("zone-b", false), "b")
	for _, z := range []string{"zone-b", "default", "nope"} {
		code, ae := e.call("GET", "/v1/zones/"+z+"/watch", a.DeviceToken, nil, nil)
		require.Equal(t, http.StatusNotFound, code)
		require.Equal(t, fmt.Sprintf("zone %q not found", z), ae.Message) // same answer whether it exists or not
	}
	code, ae := e.call("GET", "/v1/zones/zone-a/watch?since=x", a.DeviceToken, nil, nil)
	require.Equal(t, http.StatusBadRequest, code, ae)

	s := e.watch("zone-a", a.DeviceToken, 0)
	snap := s.next()
	require.Len(t, snap.Peers, 1)
	require.Equal(t, a.DeviceID, snap.Peers[0].ID)
	// A change in zone-b is not seen in zone-a.
	host := "b2"
	_, ae = e.call("PATCH", "/v1/devices/self", b.DeviceToken, api.UpdateSelfRequest{Hostname: &host}, nil)
	require.Nil(t, ae)
	_, a2 := e.mustRegister(e.joinToken("zone-a", false), "a2")
	ev := s.next()
	require.Equal(t, a2.DeviceID, ev.Peer.ID)
	s.quiet()
}

func TestWatchHeartbeatsAndClose(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.HeartbeatInterval = 20 * time.Millisecond })
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, false), "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	snap := s.next()
	select {
	case ev := <-s.events:
		require.Equal(t, api.EventHeartbeat, ev.Type)
		// At or past the snapshot: the member's own presence change, which
		// its stream skips, may have come since.
		require.GreaterOrEqual(t, ev.Revision, snap.Revision)
	case <-time.After(10 * time.Second):
		t.Fatal("no heartbeat")
	}
	// server.Close ends the stream.
	require.NoError(t, e.srv.Close())
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("stream not ended by Close")
	}
	code, _ := e.call("GET", "/v1/zones/default/watch", a.DeviceToken, nil, nil)
	require.Equal(t, http.StatusServiceUnavailable, code)
}

// TestWatchNoLossUnderConcurrentChanges opens watchers while members
// register: each watcher's snapshot plus its events must end up with every
// member, and revisions never repeat or go backwards.
func TestWatchNoLossUnderConcurrentChanges(t *testing.T) {
	const members, watchers = 20, 8
	// All watchers share one device token: lift the per-device stream cap.
	e := newEnv(t, func(c *serverConfig) { c.limits.streamsPerDevice = watchers })
	tok := e.joinToken(api.DefaultZone, true)
	_, first := e.mustRegister(tok, "first")
	regDone := make(chan []string, 1)
	go func() {
		var ids []string
		for range members {
			d := newDevice()
			r := api.RegisterRequest{PublicKey: d.pub, Hostname: "m", Timestamp: time.Now().Unix()}
			if err := r.Sign(d.priv, api.PublicKey(e.priv), api.JoinTokenHash(tok)); err != nil {
				panic(err)
			}
			b, _ := json.Marshal(r)
			req, _ := http.NewRequest("POST", e.ts.URL+"/v1/devices", bytes.NewReader(b))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := e.ts.Client().Do(req)
			if err != nil {
				regDone <- nil
				return
			}
			var rr api.RegisterResponse
			json.NewDecoder(resp.Body).Decode(&rr)
			resp.Body.Close()
			ids = append(ids, rr.DeviceID)
		}
		regDone <- ids
	}()
	streams := make([]*stream, watchers)
	for i := range streams {
		streams[i] = e.watch(api.DefaultZone, first.DeviceToken, 0)
	}
	ids := <-regDone
	require.Len(t, ids, members)
	for _, s := range streams {
		seen := map[string]bool{}
		snap := s.next()
		require.Equal(t, api.EventSnapshot, snap.Type)
		for _, p := range snap.Peers {
			seen[p.ID] = true
		}
		rev := snap.Revision
		for !allSeen(seen, ids) {
			ev := s.next()
			require.Equal(t, api.EventUpsert, ev.Type)
			require.Greater(t, ev.Revision, rev, "revisions strictly increase")
			rev = ev.Revision
			require.False(t, seen[ev.Peer.ID], "duplicate event for %s", ev.Peer.ID)
			seen[ev.Peer.ID] = true
		}
		s.quiet()
	}
}

func allSeen(seen map[string]bool, ids []string) bool {
	for _, id := range ids {
		if !seen[id] {
			return false
		}
	}
	return true
}

// A deleted device must stop learning about its zone: its own stream ends
// right after its remove event, and nothing registered later reaches it.
func TestWatchEndsWhenDeviceDeleted(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)

	code, ae := e.call("DELETE", "/v1/devices/"+a.DeviceID, e.admin, nil, nil)
	require.Nil(t, ae, code)
	rm := s.next()
	require.Equal(t, api.EventRemove, rm.Type)
	require.Equal(t, a.DeviceID, rm.Peer.ID)

	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the deleted device's watch stream stayed open")
	}
	e.mustRegister(tok, "c", "172.28.0.0/24")
	for {
		select {
		case ev := <-s.events:
			require.Equal(t, api.EventHeartbeat, ev.Type, "a deleted device received %+v", ev)
		default:
			return
		}
	}
}

// A device deleted behind this replica's back (another replica sharing the
// store, or before the deleting handler fanned the change out) is told the
// same way when its heartbeat notices first: its remove event, then the end.
func TestWatchTellsDeviceDeletedBehindItsBack(t *testing.T) {
	e := newEnv(t, func(c *serverConfig) { c.HeartbeatInterval = 20 * time.Millisecond })
	tok := e.joinToken(api.DefaultZone, true)
	_, a := e.mustRegister(tok, "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)

	require.NoError(t, e.st.DeleteDevice(context.Background(), a.DeviceID))
	rm := s.next()
	require.Equal(t, api.EventRemove, rm.Type)
	require.Equal(t, a.DeviceID, rm.Peer.ID)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the deleted device's watch stream stayed open")
	}
}

// countingStore counts device lookups.
type countingStore struct {
	store.Store
	lookups atomic.Int64
}

func (c *countingStore) Device(ctx context.Context, id string) (store.Device, error) {
	c.lookups.Add(1)
	return c.Store.Device(ctx, id)
}

// Heartbeats cost no store lookup: deletions reach a stream through the
// hub's change log.
func TestWatchHeartbeatsWithoutStoreLookups(t *testing.T) {
	var cs *countingStore
	e := newEnv(t, func(c *serverConfig) {
		c.HeartbeatInterval = 5 * time.Millisecond
		cs = &countingStore{Store: c.Store}
		c.Store = cs
	})
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, false), "a")
	s := e.watch(api.DefaultZone, a.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)
	before := cs.lookups.Load()
	for range 10 {
		select {
		case ev := <-s.events:
			require.Equal(t, api.EventHeartbeat, ev.Type)
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat")
		}
	}
	require.Equal(t, before, cs.lookups.Load(), "heartbeats looked the device up")
}

func TestHeartbeatDelayIsJittered(t *testing.T) {
	const every = 15 * time.Second
	seen := map[time.Duration]bool{}
	for range 100 {
		d := heartbeatDelay(every)
		require.LessOrEqual(t, d, every)
		require.Greater(t, d, every*3/4)
		seen[d] = true
	}
	require.Greater(t, len(seen), 50, "heartbeat delays are spread out")
	require.Equal(t, time.Duration(3), heartbeatDelay(3))
}

// A device deleted before its stream subscribed (its remove event came
// before the subscription) still gets its own remove event, then the end,
// from a snapshot or from a resume.
func TestWatchBacklogOfDeletedDevice(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, a := e.mustRegister(e.joinToken(api.DefaultZone, false), "a")
	d, err := e.st.Device(ctx, a.DeviceID)
	require.NoError(t, err)
	rev, _, err := e.st.Snapshot(ctx, api.DefaultZone)
	require.NoError(t, err)
	require.NoError(t, e.st.DeleteDevice(ctx, a.DeviceID))
	for _, since := range []int64{0, rev} {
		sub, err := e.srv.hub.subscribeAs(ctx, api.DefaultZone, d.ID)
		require.NoError(t, err)
		bl, err := e.srv.watchBacklog(ctx, sub, d, since)
		require.NoError(t, err)
		e.srv.hub.unsubscribe(sub)
		require.True(t, bl.deleted, "since %d", since)
		var last api.WatchEvent
		require.NoError(t, json.Unmarshal(bl.lines[len(bl.lines)-1], &last))
		require.Equal(t, api.EventRemove, last.Type, "since %d", since)
		require.Equal(t, a.DeviceID, last.Peer.ID)
	}
}
