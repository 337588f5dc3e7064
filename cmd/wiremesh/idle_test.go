package main

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
)

// TestPeerIdleTimeoutFlag: --peer-idle-timeout defaults to the library's
// timeout, takes 0 (never trim) and durations, and refuses a negative one
// with a usage error before anything starts.
func TestPeerIdleTimeoutFlag(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want time.Duration
	}{
		{nil, mesh.DefaultPeerIdleTimeout},
		{[]string{"--peer-idle-timeout", "0"}, 0},
		{[]string{"--peer-idle-timeout=10m"}, 10 * time.Minute},
	} {
		a, _, _, err := parseAgentArgs("join", joinUsage, append(tt.args, "--ephemeral", "https://coord.example"), io.Discard)
		require.NoError(t, err)
		require.Equal(t, tt.want, a.peerIdle, "%v", tt.args)
		_, err = a.options("join", io.Discard)
		require.NoError(t, err)
	}

	_, _, _, err := parseAgentArgs("join", joinUsage, []string{"--peer-idle-timeout", "soon", "https://coord.example"}, io.Discard)
	require.ErrorContains(t, err, "peer-idle-timeout")

	var out, errOut bytes.Buffer
	err = runJoin(context.Background(), agentArgs(t, "--userspace", "--peer-idle-timeout", "-1s", "--token", "x", "https://coord.example"), &out, &errOut)
	require.ErrorContains(t, err, "--peer-idle-timeout -1s: want 0 (never trim) or a duration such as 5m")
	var ue *usageError
	require.ErrorAs(t, err, &ue)
}
