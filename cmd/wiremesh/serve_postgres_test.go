package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

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
