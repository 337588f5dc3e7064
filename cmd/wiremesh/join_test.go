package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// joinOutput is a bytes.Buffer safe for one writer and concurrent readers.
type joinOutput struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *joinOutput) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *joinOutput) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestJoinCommand(t *testing.T) {
	s := meshtest.NewServer(t)
	first := meshtest.Join(t, s, mesh.WithHostname("first"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, []string{"--userspace", "--token", s.Token, "--hostname", "cli", "--state-dir", t.TempDir(), s.URL}, &out, &errOut)
	}()
	meshtest.WaitFor(t, "joined", func() bool { return strings.Contains(out.String(), "joined zone \"default\" as \"cli\"") })
	require.Contains(t, out.String(), "registering with "+s.URL)
	require.Contains(t, out.String(), "peer up: first "+first.Addr().String())

	late := meshtest.Join(t, s, mesh.WithHostname("late"))
	meshtest.WaitFor(t, "late peer", func() bool { return strings.Contains(out.String(), "peer up: late "+late.Addr().String()) })
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("join did not stop on cancel")
	}
}

func TestJoinCommandErrors(t *testing.T) {
	s := meshtest.NewServer(t)
	_, fp, err := api.ParseJoinToken(s.Token)
	require.NoError(t, err)
	bad := api.FormatJoinToken("wmj_00000000000000000000000000000000", fp)
	var out, errOut bytes.Buffer
	err = runJoin(context.Background(), []string{s.URL, "--userspace", "--token", bad}, &out, &errOut)
	require.ErrorContains(t, err, "the service refused the join token: create a new one with `wiremesh token create`")

	err = runJoin(context.Background(), []string{"--userspace", "--token", "nonsense", s.URL}, &out, &errOut)
	require.ErrorContains(t, err, "not a wiremesh join token")

	err = runJoin(context.Background(), []string{"--userspace"}, &out, &errOut)
	require.ErrorContains(t, err, "want exactly one service URL")
}

func TestJoinNeedsUserspace(t *testing.T) {
	var out, errOut bytes.Buffer
	err := runJoin(context.Background(), []string{"https://127.0.0.1:1"}, &out, &errOut)
	require.ErrorContains(t, err, "--userspace")
}

func TestJoinUnreachable(t *testing.T) {
	var out, errOut bytes.Buffer
	// Port 1 on loopback: nothing listens, the connection is refused.
	err := runJoin(context.Background(), []string{"--userspace", "--token", "wmj_00000000000000000000000000000000", "http://127.0.0.1:1"}, &out, &errOut)
	require.ErrorContains(t, err, "cannot reach the service at http://127.0.0.1:1")
	require.Contains(t, out.String(), "registering with http://127.0.0.1:1")
}
