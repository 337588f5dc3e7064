package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// childEnv, when set, makes the test binary run the command line it holds
// (JSON) instead of the tests: a `wiremesh` process the test can SIGKILL.
const childEnv = "WIREMESH_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if js := os.Getenv(childEnv); js != "" {
		var args []string
		if err := json.Unmarshal([]byte(js), &args); err != nil {
			panic(err)
		}
		os.Exit(run(context.Background(), args, os.Stdout, os.Stderr))
	}
	pgtest.Main(m)
}

// TestServeReplicas runs two `wiremesh serve` on one PostgreSQL database
// (one given --store, the other $WIREMESH_STORE), each with a data
// directory of its own: what the admin commands do through one replica
// shows through the other, and both serve the same certificate.
func TestServeReplicas(t *testing.T) {
	dsn := pgtest.DB(t)
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_SERVER", "")
	dirA, dirB := t.TempDir(), t.TempDir()
	urlA := startServe(t, dirA, "--store", dsn)
	t.Setenv("WIREMESH_STORE", dsn)
	urlB := startServe(t, dirB)

	code, out, errOut := cli(t, "zone", "create", "lab", "--server", urlA, "--data-dir", dirA)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `zone "lab" created`)
	code, out, errOut = cli(t, "zone", "list", "--server", urlB, "--data-dir", dirB)
	require.Equal(t, 0, code, errOut)
	require.Regexp(t, `(?m)^lab\s`, out)

	var fps [][]byte
	for _, r := range []struct{ url, dir string }{{urlA, dirA}, {urlB, dirB}} {
		code, out, errOut := cli(t, "token", "create", "--zone", "lab", "--server", r.url, "--data-dir", r.dir)
		require.Equal(t, 0, code, errOut)
		_, fp, err := api.ParseJoinToken(strings.TrimSpace(out))
		require.NoError(t, err)
		fps = append(fps, fp)
	}
	require.Len(t, fps[0], 32)
	require.Equal(t, fps[0], fps[1], "one certificate for all replicas")
}

func TestServeStoreErrors(t *testing.T) {
	t.Setenv("WIREMESH_STORE", "")
	tests := []struct{ name, store, want string }{
		{"not postgres", "sqlite:///tmp/x.db", "want a postgres://"},
		{"unreachable", "postgres://u:pw@/db?host=" + t.TempDir() + "&connect_timeout=5", "cannot reach the PostgreSQL server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(t.Context(), []string{"serve", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0",
				"--stun-listen", "off", "--store", tt.store}, &out, &errOut)
			require.Equal(t, 1, code, out.String())
			require.Contains(t, errOut.String(), tt.want)
		})
	}
}

// startServeProcess runs `wiremesh serve` in a process of its own and
// returns it with its URL and join token.
func startServeProcess(t *testing.T, args ...string) (cmd *exec.Cmd, url, token string) {
	t.Helper()
	js, err := json.Marshal(append([]string{"serve", "--listen", "127.0.0.1:0", "--stun-listen", "off"}, args...))
	require.NoError(t, err)
	cmd = exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var logs syncBuffer
	cmd.Stderr = &logs
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("serve process logs:\n%s", logs.String())
		}
	})
	found := make(chan [2]string, 1)
	go func() {
		var u string
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := urlRE.FindStringSubmatch(sc.Text()); m != nil {
				u = m[1]
			}
			if f := strings.Fields(sc.Text()); len(f) == 5 && f[0] == "wiremesh" && f[2] == "--token" {
				found <- [2]string{u, f[3]}
			}
		}
		close(found)
	}()
	select {
	case r, ok := <-found:
		require.True(t, ok, "serve exited before it printed its URL and token")
		return cmd, r[0], r[1]
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start within 30s")
	}
	return nil, "", ""
}

// TestServeReplicaKilled: a replica is killed (SIGKILL) while a member
// watches it; the member moves on to the other replica and learns of a
// member that joined there afterwards.
func TestServeReplicaKilled(t *testing.T) {
	dsn := pgtest.DB(t)
	t.Setenv("WIREMESH_STORE", "")
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	proc, urlA, tok := startServeProcess(t, "--store", dsn, "--data-dir", t.TempDir())
	urlB := startServe(t, t.TempDir(), "--store", dsn)

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	watcher, err := mesh.Join(ctx, urlA, mesh.WithToken(tok), mesh.WithFallbackURLs(urlB))
	require.NoError(t, err)
	defer watcher.Close()
	first, err := mesh.Join(ctx, urlB, mesh.WithToken(tok), mesh.WithHostname("first"))
	require.NoError(t, err)
	defer first.Close()
	meshtest.WaitPeers(t, watcher, 1)

	require.NoError(t, proc.Process.Signal(syscall.SIGKILL))
	killed := time.Now()
	later, err := mesh.Join(ctx, urlB, mesh.WithToken(tok), mesh.WithHostname("later"))
	require.NoError(t, err)
	defer later.Close()
	meshtest.WaitPeers(t, watcher, 2)
	t.Logf("the member learned of a change on the other replica %v after the kill", time.Since(killed))
	_, err = watcher.Ping(ctx, later.Addr())
	require.NoError(t, err)
}
