package meshtest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// JoinTimeout bounds Join.
const JoinTimeout = 30 * time.Second

var nodeSeq atomic.Int64

// Join joins a userspace node to s with s.URL and s.Token, and closes it
// when the test ends. Each node gets a distinct hostname ("node-N") unless
// opts set one; opts come after the defaults and override them. It fails
// the test when Join fails.
func Join(t testing.TB, s *Server, opts ...mesh.Option) *mesh.Node {
	t.Helper()
	n, err := TryJoin(t, s, opts...)
	if err != nil {
		t.Fatalf("meshtest.Join: %v", err)
	}
	return n
}

// TryJoin is Join returning the error instead of failing the test.
func TryJoin(t testing.TB, s *Server, opts ...mesh.Option) (*mesh.Node, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), JoinTimeout)
	defer cancel()
	all := append([]mesh.Option{
		mesh.WithToken(s.Token),
		mesh.WithHostname(fmt.Sprintf("node-%d", nodeSeq.Add(1))),
	}, opts...)
	n, err := mesh.Join(ctx, s.URL, all...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { n.Close() })
	return n, nil
}

// WaitTimeout bounds WaitPeers and WaitFor.
const WaitTimeout = 30 * time.Second

// WaitPeers waits until n knows exactly count peers, failing the test
// after WaitTimeout.
func WaitPeers(t testing.TB, n *mesh.Node, count int) {
	t.Helper()
	WaitFor(t, fmt.Sprintf("%d peers", count), func() bool {
		return len(n.Status().Peers) == count
	})
}

// WaitFor polls cond every 20ms until it holds, failing the test with what
// after WaitTimeout.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("meshtest: timed out after %v waiting for %s", WaitTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
