package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// netcheckReport is the part of `wiremesh netcheck --json`
// (docs/NETCHECK-JSON.md) this test reads.
type netcheckReport struct {
	UDP           bool    `json:"udp"`
	NAT           *string `json:"nat"`
	MappingVaries *bool   `json:"mapping_varies"`
	IPv4          struct {
		Public *string `json:"public"`
		Probes []struct {
			Public *string `json:"public"`
		} `json:"probes"`
	} `json:"ipv4"`
	Relay struct {
		Reachable bool `json:"reachable"`
	} `json:"relay"`
	Warnings []string `json:"warnings"`
}

// TestNetcheckBehindNAT: `wiremesh netcheck` run behind each kind of NAT
// the lab makes, without joining, tells them apart by the service's two
// STUN ports: the same public port for both (endpoint-independent), two
// ports (the mapping varies: symmetric), no answer at all (no UDP: the
// relay will be used). The relay answers from everywhere.
func TestNetcheckBehindNAT(t *testing.T) {
	netlab.RequireRoot(t)
	bin := netlab.BuildBinary(t, wiremeshPkg)
	l := netlab.New(t)
	wan := l.Switch("wan")
	svc := startService(t, l, wan, bin, "--stun-listen=192.0.2.1:3478")

	check := func(h *netlab.Host) netcheckReport {
		out := h.MustRun(t, bin, "netcheck", "--json", "--insecure-http", "--timeout", "2s", svc.url)
		var r netcheckReport
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		return r
	}
	for i, tc := range []struct {
		name string
		kind netlab.NATKind
	}{
		{"ei", netlab.NATEndpointIndependent},
		{"sym", netlab.NATSymmetric},
		{"noudp", netlab.NATNoUDP},
	} {
		h, _ := behindNAT(l, wan, tc.name, byte(i+1), tc.kind)
		r := check(h)
		require.True(t, r.Relay.Reachable, "%s: %+v", tc.name, r)
		switch tc.kind {
		case netlab.NATEndpointIndependent:
			require.True(t, r.UDP)
			require.Equal(t, "endpoint-independent", *r.NAT)
			require.False(t, *r.MappingVaries)
			require.Len(t, r.IPv4.Probes, 2)
			require.Equal(t, *r.IPv4.Probes[0].Public, *r.IPv4.Probes[1].Public)
			require.True(t, strings.HasPrefix(*r.IPv4.Public, "192.0.2.21:"), *r.IPv4.Public)
			require.Empty(t, r.Warnings)
		case netlab.NATSymmetric:
			require.True(t, r.UDP)
			require.Equal(t, "symmetric", *r.NAT)
			require.True(t, *r.MappingVaries, "the mapping varies by destination")
			require.NotEqual(t, *r.IPv4.Probes[0].Public, *r.IPv4.Probes[1].Public)
			require.True(t, strings.HasPrefix(*r.IPv4.Public, "192.0.2.22:"), *r.IPv4.Public)
			human := h.MustRun(t, bin, "netcheck", "--insecure-http", svc.url)
			require.Regexp(t, `(?m)^mapping\s+varies by destination \(symmetric NAT\)`, human)
		case netlab.NATNoUDP:
			require.False(t, r.UDP)
			require.Nil(t, r.NAT)
			require.Nil(t, r.IPv4.Public)
			require.Contains(t, r.Warnings, "UDP to 192.0.2.1:3478 got no answer in 2s: the relay will be used")
			human := h.MustRun(t, bin, "netcheck", "--insecure-http", "--timeout", "1s", svc.url)
			require.Contains(t, human, "warning: UDP to 192.0.2.1:3478 got no answer in 1s: the relay will be used")
		}
	}
}
