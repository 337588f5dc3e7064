package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The messages of issue 16: each case is what a person typed and what they
// must read instead of an internal error.
func TestUsageMessages(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_TOKEN", "")
	t.Setenv("WIREMESH_SERVER", "")
	for _, tc := range []struct {
		name string
		args []string
		want string // the whole stderr line
	}{
		{"#1 join without scheme", []string{"join", "--userspace", "127.0.0.1:18443"},
			`wiremesh: join: service URL "127.0.0.1:18443": the URL needs a scheme: did you mean https://127.0.0.1:18443?`},
		{"#1 bare host:port", []string{"127.0.0.1:18443"},
			`wiremesh: unknown command "127.0.0.1:18443": a service URL needs a scheme: did you mean wiremesh join https://127.0.0.1:18443?`},
		{"#1 --server without scheme", []string{"zone", "list", "--admin-token", "x", "--server", "127.0.0.1:18443"},
			`wiremesh: --server "127.0.0.1:18443": the URL needs a scheme: did you mean https://127.0.0.1:18443?`},
		{"#4 no join token", []string{"join", "--userspace", "https://127.0.0.1:18443"},
			"wiremesh: join: no join token: pass --token or set WIREMESH_TOKEN (`wiremesh serve` prints one; `wiremesh token create` makes more)"},
		{"#6 expires without unit", []string{"token", "create", "--admin-token", "x", "--expires", "5"},
			`wiremesh: token create: invalid value "5" for flag -expires: want a duration such as 24h or 30m (a number needs a unit: 5h?)`},
		{"#6 expires not a duration", []string{"token", "create", "--admin-token", "x", "--expires", "soon"},
			`wiremesh: token create: invalid value "soon" for flag -expires: want a duration such as 24h or 30m`},
		{"#7 listen without colon", []string{"serve", "--listen", "18443"},
			`wiremesh: serve: --listen "18443": did you mean :18443? (HOST:PORT, or :PORT for every interface)`},
		{"#7 stun-listen without colon", []string{"serve", "--stun-listen", "3478"},
			`wiremesh: serve: --stun-listen "3478": did you mean :3478? (HOST:PORT, or :PORT for every interface)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := cli(t, tc.args...)
			require.Equal(t, 2, code, "usage errors exit 2: %s", errOut)
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			require.Equal(t, tc.want, lines[len(lines)-1])
			require.Equal(t, 1, strings.Count(errOut, "wiremesh: "), "the error is printed once: %s", errOut)
		})
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errOut := cli(t, args...)
		require.Equal(t, 0, code, errOut)
		require.Regexp(t, `^wiremesh \S+\n`, out)
		require.Contains(t, out, "go:      go1.")
		require.NotContains(t, errOut, "join", "not join's usage")
	}
	code, _, errOut := cli(t, "version", "extra")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "unexpected arguments")
}

// #8, #10: a serve that cannot bind says so plainly and leaves nothing.
func TestServePortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	dir := filepath.Join(t.TempDir(), "state")
	code, out, errOut := cli(t, "serve", "--data-dir", dir, "--listen", busy.Addr().String(), "--stun-listen", "off")
	require.Equal(t, 1, code, out)
	require.Contains(t, errOut, "wiremesh: serve: cannot listen on "+busy.Addr().String())
	require.Contains(t, errOut, "the address is in use")
	require.NotContains(t, errOut, "control.Start")
	_, err = os.Stat(dir)
	require.ErrorIs(t, err, os.ErrNotExist, "no data directory, database or admin token left behind")
}

func TestPlainMessage(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"serve: control.Start: API listener: listen tcp: in use", "serve: API listener: listen tcp: in use"},
		{"join: mesh.Join: controlclient: info: Get \"x\": refused", "join: Get \"x\": refused"},
		{"stop: control.Service.Close: closed", "stop: closed"},
		{"zone \"lab\" exists", "zone \"lab\" exists"},
		{"dial tcp 10.0.0.1:443: i/o timeout", "dial tcp 10.0.0.1:443: i/o timeout"},
	} {
		require.Equal(t, tc.want, plainMessage(errString(tc.in)))
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// #2, #5 and --json against a running service.
func TestAdminAgainstService(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_SERVER", "")
	dir := t.TempDir()
	url := startServe(t, dir)
	common := []string{"--server", url, "--data-dir", dir}

	// #2: plain HTTP to the HTTPS service.
	httpURL := "http://" + strings.TrimPrefix(url, "https://")
	code, _, errOut := cli(t, "zone", "list", "--server", httpURL, "--data-dir", dir)
	require.Equal(t, 1, code)
	require.Equal(t, "wiremesh: zone list: the service at "+httpURL+" speaks HTTPS: use --server "+url+"\n", errOut)

	// #5: a certificate this machine does not trust.
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	require.NoError(t, err)
	code, _, errOut = cli(t, "zone", "list", "--server", url, "--data-dir", t.TempDir(), "--admin-token", strings.TrimSpace(string(tok)))
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "wiremesh: zone list: the service at "+url+" presents a certificate this machine does not trust: "+
		"pass --tls-fingerprint (the \"certificate SHA-256\" printed by `wiremesh serve`) or the service's --data-dir")

	// --json: snake_case keys, [] when empty.
	for _, args := range [][]string{{"device", "list"}, {"prefix", "list"}} {
		code, out, errOut := cli(t, append(append(args, "--json"), common...)...)
		require.Equal(t, 0, code, errOut)
		require.Equal(t, "[]\n", out, "%q", args)
	}
	code, out, errOut := cli(t, append([]string{"zone", "list", "--json"}, common...)...)
	require.Equal(t, 0, code, errOut)
	var zones []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &zones))
	require.Len(t, zones, 1)
	require.Equal(t, "default", zones[0]["name"])
	require.Contains(t, zones[0], "ipv4_pool")
	require.Contains(t, zones[0], "allow_exit_nodes")

	code, out, errOut = cli(t, append([]string{"token", "list", "--json", "--zone", "default"}, common...)...)
	require.Equal(t, 0, code, errOut)
	var tokens []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &tokens))
	require.Len(t, tokens, 1, "the token serve printed")
	require.Equal(t, true, tokens[0]["reusable"])
	require.Contains(t, tokens[0], "expires_at")
	require.NotContains(t, tokens[0], "token", "the secret is never listed")
}

// #2 for join: plain HTTP to the HTTPS service.
func TestJoinHTTPToHTTPS(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	dir := t.TempDir()
	url := startServe(t, dir)
	code, tok, errOut := cli(t, "token", "create", "--server", url, "--data-dir", dir)
	require.Equal(t, 0, code, errOut)
	httpURL := "http://" + strings.TrimPrefix(url, "https://")
	code, _, errOut = cli(t, "join", "--userspace", "--token", strings.TrimSpace(tok), httpURL)
	require.Equal(t, 2, code, errOut)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	require.Equal(t, "wiremesh: join: the service at "+httpURL+" speaks HTTPS: use "+url, lines[len(lines)-1])
}

// #3: a token from another service; #9: no service at the URL.
func TestJoinWrongServiceAndNoService(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	dirA, dirB := t.TempDir(), t.TempDir()
	urlA, urlB := startServe(t, dirA), startServe(t, dirB)
	code, tok, errOut := cli(t, "token", "create", "--server", urlA, "--data-dir", dirA)
	require.Equal(t, 0, code, errOut)
	code, _, errOut = cli(t, "join", "--userspace", "--token", strings.TrimSpace(tok), urlB)
	require.Equal(t, 1, code, errOut)
	require.Equal(t, "wiremesh: join: the service at "+urlB+" presents a certificate that is not the one pinned in the join token "+
		"(a token from another service, or the service's certificate was replaced): create a new token with `wiremesh token create`\n", errOut)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := "https://" + closed.Addr().String()
	closed.Close()
	code, _, errOut = cli(t, "join", "--userspace", "--token", strings.TrimSpace(tok), gone)
	require.Equal(t, 1, code, errOut)
	require.Equal(t, 1, strings.Count(errOut, "\n"), "one line, no retry warnings: %s", errOut)
	require.Contains(t, errOut, "wiremesh: join: cannot reach the service at "+gone+": is `wiremesh serve` running there?")
}
