package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

func TestAgentInstanceAndStateDir(t *testing.T) {
	require.Equal(t, "wg0", agentInstance(false, "wg0", false))
	require.Equal(t, "wm1", agentInstance(false, "wm1", true))
	require.Equal(t, "userspace", agentInstance(true, "wg0", false), "a userspace agent is not wg0")
	require.Equal(t, "userspace-lab", agentInstance(true, "lab", true))

	d, err := stateDirFor(0, "wg0")
	require.NoError(t, err)
	require.Equal(t, "/var/lib/wiremesh/wg0", d)
	t.Setenv("XDG_STATE_HOME", "/xdg/state")
	d, err = stateDirFor(1000, "userspace")
	require.NoError(t, err)
	require.Equal(t, "/xdg/state/wiremesh/userspace", d)
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	d, err = stateDirFor(1000, "userspace")
	require.NoError(t, err)
	require.Equal(t, "/home/u/.local/state/wiremesh/userspace", d)
	require.NotEqual(t, defaultSocketPath(agentInstance(true, "wg0", false)), defaultSocketPath(agentInstance(false, "wg0", false)))
}

// startAgent runs `wiremesh join` in the background and waits until it has
// joined; stop cancels it and returns its error.
func startAgent(t *testing.T, args ...string) (out *joinOutput, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out = &joinOutput{}
	done := make(chan error, 1)
	go func() { done <- runJoin(ctx, args, out, &bytes.Buffer{}) }()
	meshtest.WaitFor(t, "joined", func() bool { return strings.Contains(out.String(), "joined zone") })
	return out, func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			t.Fatal("the agent did not stop")
			return nil
		}
	}
}

func TestDownThroughTheRunningAgent(t *testing.T) {
	s := meshtest.NewServer(t)
	watcher := meshtest.Join(t, s, mesh.WithHostname("watcher"))
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &joinOutput{}
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, []string{"--userspace", "--token", s.Token, "--hostname", "leaver",
			"--state-dir", filepath.Join(dir, "state"), "--socket", sock, s.URL}, out, &bytes.Buffer{})
	}()
	meshtest.WaitPeers(t, watcher, 1)
	meshtest.WaitFor(t, "status socket", func() bool { return statusSocketLive(sock) })

	var downOut bytes.Buffer
	require.NoError(t, runDown(context.Background(), []string{"--socket", sock}, &downOut, &bytes.Buffer{}))
	require.Contains(t, downOut.String(), `leaver left zone "default"`)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not stop after down")
	}
	require.Contains(t, out.String(), "left the mesh: the device is deleted at the service")
	meshtest.WaitPeers(t, watcher, 0)
	ds, err := s.AdminClient(t).Devices(context.Background(), "")
	require.NoError(t, err)
	require.Len(t, ds, 1, "only the watcher is left")
}

func TestDownWithTheStateDir(t *testing.T) {
	s := meshtest.NewServer(t)
	args := agentArgs(t, "--userspace", "--token", s.Token, "--hostname", "gone", s.URL)
	out, stop := startAgent(t, args...)
	require.NoError(t, stop())
	require.Contains(t, out.String(), "the node keeps its registration")
	ds, err := s.AdminClient(t).Devices(context.Background(), "")
	require.NoError(t, err)
	require.Len(t, ds, 1, "a stopped agent keeps its device")

	stateDir := args[3] // agentArgs: --socket S --state-dir D
	var downOut bytes.Buffer
	require.NoError(t, runDown(context.Background(), []string{"--socket", args[1], "--state-dir", stateDir, "--token", s.Token}, &downOut, &bytes.Buffer{}))
	require.Contains(t, downOut.String(), "left the mesh")
	ds, err = s.AdminClient(t).Devices(context.Background(), "")
	require.NoError(t, err)
	require.Empty(t, ds)
	err = runDown(context.Background(), []string{"--socket", args[1], "--state-dir", stateDir}, &downOut, &bytes.Buffer{})
	require.ErrorContains(t, err, "holds no registration")
}

func TestEphemeralAgent(t *testing.T) {
	s := meshtest.NewServer(t)
	_, stop := startAgent(t, "--userspace", "--ephemeral", "--token", s.Token, "--socket", filepath.Join(t.TempDir(), "s.sock"), s.URL)
	ds, err := s.AdminClient(t).Devices(context.Background(), "")
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.True(t, ds[0].Ephemeral)
	require.NoError(t, stop())
	ds, err = s.AdminClient(t).Devices(context.Background(), "")
	require.NoError(t, err)
	require.Empty(t, ds, "an ephemeral agent's device goes when it stops")
}
