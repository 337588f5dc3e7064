package meshtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/mesh"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestReplicaFailover: members watch one replica of a service on
// PostgreSQL; it stops. They move on to the other replica within a few
// seconds and resume their watch from their revision: every change made
// meanwhile reaches them (a member joining, one leaving), and the data
// plane works with the newcomer.
func TestReplicaFailover(t *testing.T) {
	dsn := pgtest.DB(t)
	a := NewServer(t, WithStore(dsn))
	b := NewServer(t, WithStore(dsn))
	require.Equal(t, a.Service().Fingerprint(), b.Service().Fingerprint(), "one certificate")

	var watchers []*mesh.Node
	for range 3 {
		watchers = append(watchers, Join(t, a, mesh.WithFallbackURLs(b.URL)))
	}
	leaving := Join(t, b)
	for _, w := range watchers {
		WaitPeers(t, w, len(watchers))
	}
	events := make([]*eventLog, len(watchers))
	for i, w := range watchers {
		events[i] = watchEvents(t, w)
	}

	a.Stop()
	stopped := time.Now()
	// Changes while the watchers are moving over: a member joins through
	// the surviving replica, another leaves there.
	newcomer := Join(t, b)
	// leaving has no state directory, so it is ephemeral: Close deletes its
	// device at the replica it talks to, the surviving one.
	gone := leaving.Status().Self.Hostname
	require.True(t, leaving.Status().Self.Ephemeral)
	require.NoError(t, leaving.Close())

	for i, w := range watchers {
		WaitFor(t, "the change made on the other replica", func() bool {
			return events[i].saw(mesh.PeerAdded, newcomer.Status().Self.Hostname) &&
				events[i].saw(mesh.PeerRemoved, gone)
		})
		require.True(t, w.Status().ControlConnected)
	}
	t.Logf("all %d watchers caught up %v after the replica stopped", len(watchers), time.Since(stopped))
	require.Less(t, time.Since(stopped), 20*time.Second, "failover within a few seconds (generous under load)")
	for _, w := range watchers {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := w.Ping(ctx, newcomer.Addr())
		cancel()
		require.NoError(t, err, "the newcomer, learned from the other replica, answers")
	}
}

// eventLog records a node's events.
type eventLog struct {
	mu  sync.Mutex
	evs []mesh.Event
}

func watchEvents(t *testing.T, n *mesh.Node) *eventLog {
	ctx, cancel := context.WithCancel(context.Background())
	l := &eventLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range n.Watch(ctx) {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return l
}

func (l *eventLog) saw(typ mesh.EventType, host string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range l.evs {
		if ev.Type == typ && ev.Peer.Hostname == host {
			return true
		}
	}
	return false
}
