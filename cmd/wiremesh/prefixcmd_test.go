package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// startCLIAgent runs `wiremesh --userspace` until the test ends and
// returns its status socket.
func startCLIAgent(t *testing.T, s *meshtest.Server, hostname string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(t.TempDir(), "s.sock")
	var out, errOut joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, []string{"--userspace", "--token", s.Token, "--hostname", hostname, "--state-dir", t.TempDir(), "--socket", sock, s.URL}, &out, &errOut)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err, errOut.String())
		case <-time.After(10 * time.Second):
			t.Error("join did not stop on cancel")
		}
	})
	meshtest.WaitFor(t, "status socket", func() bool { return statusSocketLive(sock) })
	return sock
}

func TestPrefixCommandsOnAgent(t *testing.T) {
	s := meshtest.NewServer(t)
	watcher := meshtest.Join(t, s, mesh.WithHostname("watcher"))
	sock := startCLIAgent(t, s, "member")
	ctx := context.Background()
	p := netip.MustParsePrefix("10.55.0.0/24")
	peerPrefixes := func() []netip.Prefix {
		for _, pe := range watcher.Status().Peers {
			if pe.Hostname == "member" {
				return pe.Prefixes
			}
		}
		return nil
	}
	noAdmin := []string{"--data-dir", t.TempDir()} // no admin token at hand
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")

	var out, errOut bytes.Buffer
	require.NoError(t, runPrefixAdvertise(ctx, []string{"--socket", sock, p.String()}, &out, &errOut))
	require.Contains(t, out.String(), "prefix 10.55.0.0/24 advertised; the agent's child prefixes: 10.55.0.0/24")
	meshtest.WaitFor(t, "the peer sees the prefix", func() bool { return len(peerPrefixes()) == 1 })

	// A conflict is the service's error, with its code.
	other := startCLIAgent(t, s, "other")
	err := runPrefixAdvertise(ctx, []string{"--socket", other, "10.55.0.0/16"}, &out, &errOut)
	require.ErrorContains(t, err, "prefix_conflict")

	// Without --socket and without an admin token, release is the agent's.
	out.Reset()
	require.NoError(t, runPrefixRelease(ctx, append(noAdmin, "--socket", sock, p.String()), &out, &errOut))
	require.Contains(t, out.String(), "prefix 10.55.0.0/24 released; the agent's child prefixes: -")
	meshtest.WaitFor(t, "the peer no longer routes it", func() bool { return len(peerPrefixes()) == 0 })
	err = runPrefixRelease(ctx, append(noAdmin, "--socket", sock, p.String()), &out, &errOut)
	require.ErrorContains(t, err, "10.55.0.0/24")
	err = runPrefixRelease(ctx, append(noAdmin, "--interface", "wmnone9", p.String()), &out, &errOut)
	require.ErrorContains(t, err, "no agent is running")
	err = runPrefixRelease(ctx, append(noAdmin, "--zone", "lab", p.String()), &out, &errOut)
	require.ErrorContains(t, err, "no admin token")
	err = runPrefixRelease(ctx, []string{"--socket", sock, "--zone", "lab", p.String()}, &out, &errOut)
	require.ErrorContains(t, err, "not both")
	err = runPrefixAdvertise(ctx, []string{"--socket", sock, "10.55.0.1/24"}, &out, &errOut)
	require.ErrorContains(t, err, "did you mean 10.55.0.0/24")
}

// A client that sends no request gets the status (clients from before
// requests existed); an unknown request gets an error with a code.
func TestStatusSocketRequests(t *testing.T) {
	s := meshtest.NewServer(t)
	sock := startCLIAgent(t, s, "member")
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer c.Close()
	var st mesh.Status
	require.NoError(t, json.NewDecoder(c).Decode(&st))
	require.Equal(t, "member", st.Self.Hostname)

	r, err := callAgent(context.Background(), sock, agentRequest{Op: "frobnicate"})
	require.NoError(t, err)
	require.Equal(t, "bad_request", r.Code)
	require.True(t, strings.Contains(r.Error, "frobnicate"))
}
