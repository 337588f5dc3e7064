package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/api"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cli runs the command line in-process and returns exit status and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

var urlRE = regexp.MustCompile(`listening on (https?://\S+)`)

// startServe runs `wiremesh serve` in-process until the test ends.
func startServe(t *testing.T, dir string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	args := append([]string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0"}, extra...)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			require.Equal(t, 0, code, errOut.String())
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop")
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := urlRE.FindStringSubmatch(out.String()); m != nil && strings.Contains(out.String(), "wiremesh join --token") {
			return m[1]
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d: %s%s", code, out.String(), errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("serve did not start: %s%s", out.String(), errOut.String())
	return ""
}

func TestServeAndAdminCommands(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) }) // runs after serve stopped
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_SERVER", "")
	dir := t.TempDir()
	url := startServe(t, dir)
	require.True(t, strings.HasPrefix(url, "https://127.0.0.1:"), url)
	common := []string{"--server", url, "--data-dir", dir}

	code, out, errOut := cli(t, append([]string{"zone", "create", "lab", "--allow-exit-nodes"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `zone "lab" created`)

	code, _, errOut = cli(t, append([]string{"zone", "create", "lab"}, common...)...)
	require.Equal(t, 1, code)
	require.Equal(t, "wiremesh: zone create \"lab\": conflict: zone \"lab\" exists\n", errOut)

	code, out, errOut = cli(t, append([]string{"zone", "list"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^NAME\s+IPV4 POOL`, out)
	require.Regexp(t, `(?m)^lab\s+100\.64\.0\.0/16\s+fd`, out)
	require.Regexp(t, `(?m)^default\s`, out)

	code, out, errOut = cli(t, append([]string{"token", "create", "--zone", "lab", "--reusable", "--expires", "1h"}, common...)...)
	require.Equal(t, 0, code, errOut)
	tok := strings.TrimSpace(out)
	require.NotContains(t, tok, "\n", "only the token on stdout")
	_, fp, err := api.ParseJoinToken(tok)
	require.NoError(t, err)
	require.Len(t, fp, 32, "self-signed TLS: the token pins the certificate")

	code, out, errOut = cli(t, append([]string{"token", "list", "--zone", "lab"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, 2, strings.Count(out, "\n"), out) // header + one token

	for _, args := range [][]string{{"device", "list"}, {"prefix", "list", "--zone", "lab"}} {
		code, out, errOut = cli(t, append(args, common...)...)
		require.Equal(t, 0, code, errOut)
		require.Equal(t, 1, strings.Count(out, "\n"), out) // header only
	}

	code, _, errOut = cli(t, append([]string{"device", "delete", "nope"}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, `wiremesh: device delete "nope": not_found:`)
	code, _, errOut = cli(t, append([]string{"prefix", "release", "--zone", "lab", "10.0.0.0/8"}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "not_found")

	// Usage errors exit 2.
	for _, args := range [][]string{
		{"zone"}, {"zone", "frobnicate"}, {"frobnicate"},
		append([]string{"zone", "create"}, common...),
		append([]string{"prefix", "release", "10.0.0.1/8"}, common...),
		append([]string{"token", "create", "--expires", "soon"}, common...),
		{"serve", "extra"},
	} {
		code, _, errOut := cli(t, args...)
		require.Equal(t, 2, code, "%q: %s", args, errOut)
	}
	// Wrong admin token: 401, printed plainly.
	code, _, errOut = cli(t, append([]string{"zone", "list", "--admin-token", "wrong"}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "unauthorized")
	// Wrong pin: refused before any credential is sent.
	code, _, errOut = cli(t, "zone", "list", "--server", url, "--admin-token", "x", "--tls-fingerprint", strings.Repeat("00", 32))
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "does not match the pinned")
}

func TestServeInsecureWithEnvToken(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "wma_fromenv")
	dir := t.TempDir()
	url := startServe(t, dir, "--insecure-http")
	require.True(t, strings.HasPrefix(url, "http://127.0.0.1:"), url)
	_, err := os.Stat(filepath.Join(dir, "admin.token"))
	require.ErrorIs(t, err, os.ErrNotExist)
	code, out, errOut := cli(t, "token", "create", "--server", url, "--data-dir", t.TempDir())
	require.Equal(t, 0, code, errOut)
	require.NotContains(t, out, ".", "plain HTTP: no fingerprint in the token")
}

func TestDispatch(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		{nil, 2, "missing command"},
		{[]string{"--help"}, 0, "commands:"},
		{[]string{"help"}, 0, "serve"},
		{[]string{"zone"}, 2, "zone: missing subcommand"},
		{[]string{"zone", "-h"}, 0, "create"},
		{[]string{"zone", "create", "-h"}, 0, "-allow-exit-nodes"},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{[]string{"token", "nope"}, 2, `unknown command "token nope"`},
		// A URL first means join.
		{append([]string{"https://127.0.0.1:1", "--userspace"}, agentArgs(t)...), 2, "join: no join token: pass --token or set WIREMESH_TOKEN"},
		{[]string{"127.0.0.1:1"}, 2, `unknown command "127.0.0.1:1": a service URL needs a scheme: did you mean wiremesh join https://127.0.0.1:1?`},
		{[]string{"zone", "list", "--server", "ftp://x", "--admin-token", "t"}, 2, "--server"},
		{[]string{"zone", "list", "--data-dir", "/nonexistent", "--server", "https://127.0.0.1:1"}, 2, "no admin token"},
	} {
		t.Setenv("WIREMESH_ADMIN_TOKEN", "")
		t.Setenv("WIREMESH_TOKEN", "")
		code, _, errOut := cli(t, tc.args...)
		require.Equal(t, tc.code, code, "%q: %s", tc.args, errOut)
		require.Contains(t, errOut, tc.want, "%q", tc.args)
	}
}
