package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPolicyCommands(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_SERVER", "")
	dir := t.TempDir()
	url := startServe(t, dir)
	common := []string{"--server", url, "--data-dir", dir}
	write := func(name, doc string) string {
		p := filepath.Join(t.TempDir(), name)
		require.NoError(t, os.WriteFile(p, []byte(doc), 0o600))
		return p
	}

	code, out, errOut := cli(t, append([]string{"policy", "get"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Empty(t, out)
	require.Contains(t, errOut, "has no policy")

	code, _, errOut = cli(t, append([]string{"token", "create", "--tag", "web", "--tag", "bad tag"}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "invalid_selector")
	code, _, errOut = cli(t, append([]string{"token", "create", "--tag", "web", "--reusable"}, common...)...)
	require.Equal(t, 0, code, errOut)
	code, out, errOut = cli(t, append([]string{"token", "list"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "web")

	good := "{\n  \"tags\": {\"web\": []},\n  \"rules\": [\n    {\"from\": [\"*\"], \"to\": [\"tag:web:80\"], \"proto\": \"tcp\"}\n  ]\n}\n"
	bad := strings.Replace(good, "tag:web:80", "tag:db:80", 1)
	badFile := write("bad.json", bad)
	code, _, errOut = cli(t, append([]string{"policy", "set", badFile}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, badFile+":4: unknown_tag:")
	require.Contains(t, errOut, "unchanged")

	code, out, errOut = cli(t, append([]string{"policy", "set", write("good.json", good)}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `policy of zone "default" set`)
	code, out, errOut = cli(t, append([]string{"policy", "get"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Equal(t, good, out, "the document as set")

	// Nobody is a member yet: a check names the missing member.
	code, out, _ = cli(t, append([]string{"policy", "check", "100.64.0.1", "100.64.0.2:80"}, common...)...)
	require.Equal(t, 1, code)
	require.Contains(t, out, "denied: no member holds 100.64.0.1")

	code, out, errOut = cli(t, append([]string{"policy", "delete"}, common...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, "everything is allowed")
	code, _, errOut = cli(t, append([]string{"policy", "check", "a"}, common...)...)
	require.Equal(t, 2, code, errOut)
}
