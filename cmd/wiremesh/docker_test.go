package main

import (
	"bytes"
	"flag"
	"io"
	"net/netip"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/route"
)

func TestDockerFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    dockerFlag
		str     string
		wantErr string
	}{
		{args: nil, want: dockerFlag{}, str: "auto"},
		{args: []string{"--docker"}, want: dockerFlag{set: true, on: true}, str: "true"},
		{args: []string{"--docker=true"}, want: dockerFlag{set: true, on: true}, str: "true"},
		{args: []string{"--docker=false"}, want: dockerFlag{set: true, on: false}, str: "false"},
		{args: []string{"-docker=0"}, want: dockerFlag{set: true, on: false}, str: "false"},
		{args: []string{"--docker=false", "--docker"}, want: dockerFlag{set: true, on: true}, str: "true"},
		{args: []string{"--docker=auto"}, wantErr: `want true or false, got "auto"`},
		{args: []string{"--docker=yes"}, wantErr: `want true or false, got "yes"`},
	} {
		fs := flag.NewFlagSet("router", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var a agentFlags
		a.register(fs)
		// The flag is boolean: a following word is a positional argument,
		// not its value.
		pos, err := parseFlags(fs, append(append([]string(nil), tc.args...), "https://example.test:8443"))
		if tc.wantErr != "" {
			require.ErrorContains(t, err, tc.wantErr, "%q", tc.args)
			continue
		}
		require.NoError(t, err, "%q", tc.args)
		require.Equal(t, []string{"https://example.test:8443"}, pos, "%q", tc.args)
		require.Equal(t, tc.want, a.docker, "%q", tc.args)
		require.Equal(t, tc.str, a.docker.String(), "%q", tc.args)
	}
	require.Equal(t, "auto", (*dockerFlag)(nil).String())
	require.True(t, (&dockerFlag{}).IsBoolFlag())
}

// TestDockerRulesNone covers the cases that add no rule and touch nothing
// on the host; forcing the rules and the automatic case on a real Docker
// bridge are tested end to end (e2e/docker).
func TestDockerRulesNone(t *testing.T) {
	children := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")} // TEST-NET-1: never a Docker bridge
	for _, tc := range []struct {
		name     string
		d        dockerFlag
		children []netip.Prefix
	}{
		{"--docker=false", dockerFlag{set: true}, children},
		{"--docker without child prefixes", dockerFlag{set: true, on: true}, nil},
		{"auto without child prefixes", dockerFlag{}, nil},
		// Whether or not this machine has Docker, 192.0.2.0/24 is no
		// bridge's subnet: auto mode adds nothing.
		{"auto, prefix not on a Docker bridge", dockerFlag{}, children},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			du, err := dockerRules(tc.d, "wm-unit0", tc.children, &out, nil)
			if du != nil { // a bug: take the rule out again
				t.Cleanup(func() { _ = du.Close() })
			}
			require.NoError(t, err)
			require.Nil(t, du)
			require.Empty(t, out.String())
		})
	}
}

// TestDockerRulesForcedBadInput: --docker with an interface name the
// kernel cannot have fails before anything is changed.
func TestDockerRulesForcedBadInput(t *testing.T) {
	var out bytes.Buffer
	du, err := dockerRules(dockerFlag{set: true, on: true}, "far-too-long-ifname", []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, &out, nil)
	if runtime.GOOS == "linux" {
		require.ErrorIs(t, err, route.ErrInvalid)
	} else {
		require.ErrorIs(t, err, route.ErrUnsupported)
	}
	require.ErrorContains(t, err, "--docker:")
	require.Nil(t, du)
	require.Empty(t, out.String())
}
