package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh/netcheck"
)

// TestNetcheckCommand runs `wiremesh netcheck` against `wiremesh serve`
// on 127.0.0.1, trusting its certificate through --data-dir as the admin
// commands do, then through a join token.
func TestNetcheckCommand(t *testing.T) {
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	t.Setenv("WIREMESH_TOKEN", "")
	dir := t.TempDir()
	url := startServe(t, dir)

	code, out, errOut := cli(t, "netcheck", "--data-dir", dir, url)
	require.Equal(t, 0, code, errOut)
	require.Empty(t, errOut)
	require.Regexp(t, `(?m)^service\s+`+url+` \(version `, out)
	require.Regexp(t, `(?m)^UDP\s+yes$`, out)
	require.Regexp(t, `(?m)^IPv4\s+public address 127\.0\.0\.1:\d+, STUN latency [0-9.]+ ms \(127\.0\.0\.1:\d+ saw 127\.0\.0\.1:\d+, 127\.0\.0\.1:\d+ saw 127\.0\.0\.1:\d+\)$`, out)
	require.Regexp(t, `(?m)^IPv6\s+not checked: the service has no STUN address of this family$`, out)
	require.Regexp(t, `(?m)^mapping\s+no NAT: the public address is this machine's own$`, out)
	require.Regexp(t, `(?m)^HTTPS latency\s+[0-9.]+ ms$`, out)
	require.Regexp(t, `(?m)^relay\s+reachable \(it refused the WebSocket for want of a device token, as expected without joining\)$`, out)
	require.Regexp(t, `(?m)^local addresses\s+127\.0\.0\.1`, out)
	require.NotContains(t, out, "warning")

	code, tok, errOut := cli(t, "token", "create", "--server", url, "--data-dir", dir)
	require.Equal(t, 0, code, errOut)
	code, out, errOut = cli(t, "netcheck", "--json", "--data-dir", t.TempDir(), "--token", strings.TrimSpace(tok), url)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"warnings": []`, "[] when empty, never null")
	var r struct {
		FormatVersion  int     `json:"format_version"`
		Service        string  `json:"service"`
		ServiceVersion string  `json:"service_version"`
		UDP            bool    `json:"udp"`
		NAT            *string `json:"nat"`
		MappingVaries  *bool   `json:"mapping_varies"`
		HTTPSRTTMs     float64 `json:"https_rtt_ms"`
		IPv4, IPv6     struct {
			Checked   bool     `json:"checked"`
			Public    *string  `json:"public"`
			STUNRTTMs *float64 `json:"stun_rtt_ms"`
			NAT       *string  `json:"nat"`
			Error     *string  `json:"error"`
			Probes    []struct {
				Server string   `json:"server"`
				Public *string  `json:"public"`
				RTTMs  *float64 `json:"rtt_ms"`
			} `json:"probes"`
		}
		Relay struct {
			Offered, Reachable, Authenticated bool
			Error                             *string `json:"error"`
		} `json:"relay"`
		LocalAddrs []netip.Addr `json:"local_addrs"`
		Warnings   []string     `json:"warnings"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(&r))
	require.Equal(t, 1, r.FormatVersion)
	require.Equal(t, url, r.Service)
	require.True(t, r.UDP)
	require.Equal(t, "none", *r.NAT)
	require.False(t, *r.MappingVaries)
	require.Positive(t, r.HTTPSRTTMs)
	require.True(t, r.IPv4.Checked)
	require.True(t, strings.HasPrefix(*r.IPv4.Public, "127.0.0.1:"), *r.IPv4.Public)
	require.Positive(t, *r.IPv4.STUNRTTMs)
	require.Nil(t, r.IPv4.Error)
	require.Len(t, r.IPv4.Probes, 2)
	require.Equal(t, *r.IPv4.Public, *r.IPv4.Probes[1].Public)
	require.False(t, r.IPv6.Checked)
	require.Nil(t, r.IPv6.Public)
	require.Equal(t, "the service has no STUN address of this family", *r.IPv6.Error)
	require.True(t, r.Relay.Offered && r.Relay.Reachable && !r.Relay.Authenticated)
	require.Nil(t, r.Relay.Error)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), r.LocalAddrs[0])
	require.Empty(t, r.Warnings)
}

// TestNetcheckErrors: what cannot be checked says what to do.
func TestNetcheckErrors(t *testing.T) {
	t.Setenv("WIREMESH_TOKEN", "")
	t.Setenv("WIREMESH_ADMIN_TOKEN", "")
	dirA, dirB := t.TempDir(), t.TempDir()
	urlA, urlB := startServe(t, dirA), startServe(t, dirB)

	code, _, errOut := cli(t, "netcheck", "--data-dir", t.TempDir(), urlA)
	require.Equal(t, 1, code)
	require.Contains(t, errOut, "wiremesh: netcheck: the service at "+urlA+" presents a certificate this machine does not trust: "+
		"pass --token (a join token pins it), --tls-fingerprint, or the service's --data-dir")

	code, tok, errOut := cli(t, "token", "create", "--server", urlA, "--data-dir", dirA)
	require.Equal(t, 0, code, errOut)
	code, _, errOut = cli(t, "netcheck", "--token", strings.TrimSpace(tok), urlB)
	require.Equal(t, 1, code)
	require.Equal(t, "wiremesh: netcheck: the service at "+urlB+" presents a certificate that is not the one pinned by the token or --tls-fingerprint "+
		"(a token from another service, or the service's certificate was replaced)\n", errOut)

	httpURL := "http://" + strings.TrimPrefix(urlA, "https://")
	code, _, errOut = cli(t, "netcheck", httpURL)
	require.Equal(t, 1, code)
	require.Equal(t, "wiremesh: netcheck: the service at "+httpURL+" speaks HTTPS: use "+urlA+"\n", errOut)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := "https://" + closed.Addr().String()
	closed.Close()
	code, _, errOut = cli(t, "netcheck", "--data-dir", dirA, gone)
	require.Equal(t, 1, code)
	require.Equal(t, 1, strings.Count(errOut, "\n"), "one line: %s", errOut)
	require.Contains(t, errOut, "wiremesh: netcheck: cannot reach the service at "+gone+": is `wiremesh serve` running there?")

	code, _, errOut = cli(t, "netcheck")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "wiremesh: netcheck: want the service URL (e.g. https://HOST:8443), got 0 arguments")
	code, _, errOut = cli(t, "netcheck", "127.0.0.1:8443")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "did you mean https://127.0.0.1:8443?")
}

// TestPrintNetcheckBlocked: a network without UDP and behind a symmetric
// NAT over IPv6, as a person reads it.
func TestPrintNetcheckBlocked(t *testing.T) {
	srv := netip.MustParseAddrPort("192.0.2.1:3478")
	r := &netcheck.Report{
		Service: "https://svc:8443", ServiceVersion: "v1", HTTPSLatency: 2500 * time.Microsecond,
		IPv4:     netcheck.Family{Checked: true, Probes: []netcheck.Probe{{Server: srv}}, Err: "no answer in 3s"},
		IPv6:     netcheck.Family{Err: "no udp6 socket: address family not supported"},
		Relay:    netcheck.Relay{Offered: true, Reachable: true},
		Warnings: []string{"UDP to 192.0.2.1:3478 got no answer in 3s: the relay will be used"},
	}
	var b bytes.Buffer
	printNetcheck(&b, r)
	require.Equal(t, `service          https://svc:8443 (version v1)
UDP              no
IPv4             no answer from 192.0.2.1:3478 (no answer in 3s)
IPv6             not checked: no udp6 socket: address family not supported
mapping          unknown (fewer than two STUN answers)
HTTPS latency    2.500 ms
relay            reachable (it refused the WebSocket for want of a device token, as expected without joining)
local addresses  none
warning: UDP to 192.0.2.1:3478 got no answer in 3s: the relay will be used
`, b.String())
	j := toNetcheckJSON(r)
	require.Nil(t, j.NAT)
	require.Nil(t, j.MappingVaries)
	require.Nil(t, j.IPv4.Public)
	require.Equal(t, "no answer in 3s", *j.IPv4.Error)
	require.Equal(t, []netip.Addr{}, j.LocalAddrs)
}
