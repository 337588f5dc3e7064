package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// start runs `workload serve` on a loopback port until the test ends.
func start(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve", "--listen", addr, "--name", name}, &bytes.Buffer{}) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return addr
}

func TestServeDial(t *testing.T) {
	addr := start(t, "c1")
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"dial", "--expect", "c1", addr}, &out))
	line := strings.TrimSpace(out.String())
	require.True(t, strings.HasPrefix(line, "workload name=c1 local="+addr+" remote=127.0.0.1:"), line)

	// The flags may come after the address, too.
	out.Reset()
	err := run(context.Background(), []string{"dial", addr, "--expect", "c2", "--timeout", "1s"}, &out)
	require.ErrorContains(t, err, "want name=c2")
}

func TestDialGivesUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	start := time.Now()
	err = run(context.Background(), []string{"dial", "--timeout", "500ms", addr}, &bytes.Buffer{})
	require.ErrorContains(t, err, "dial "+addr)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestPingLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: ping opens a raw ICMP socket")
	}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"ping", "--timeout", "5s", "127.0.0.1"}, &out))
	require.True(t, strings.HasPrefix(out.String(), "reply from 127.0.0.1 in "), out.String())
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"nothing", nil, "usage:"},
		{"unknown command", []string{"fly"}, `unknown command "fly"`},
		{"dial without address", []string{"dial"}, "want 1 argument"},
		{"dial bad address", []string{"dial", "nowhere"}, `address "nowhere": want HOST:PORT`},
		{"ping a name", []string{"ping", "example"}, `host "example": want an IP address`},
		{"bad flag", []string{"serve", "--nope"}, "flag provided but not defined"},
		{"bad name", []string{"serve", "--name", "a b", "--listen", "127.0.0.1:0"}, `name "a b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, &bytes.Buffer{})
			var u usageError
			require.ErrorAs(t, err, &u)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
