package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// TestPingCommand: `wiremesh ping` through a running agent's status socket.
func TestPingCommand(t *testing.T) {
	s := meshtest.NewServer(t)
	web := meshtest.Join(t, s, mesh.WithHostname("web"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "s.sock")
	var out, errOut joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, []string{"--userspace", "--token", s.Token, "--hostname", "pinger", "--state-dir", t.TempDir(), "--socket", sock, s.URL}, &out, &errOut)
	}()
	meshtest.WaitFor(t, "status socket", func() bool { return statusSocketLive(sock) })
	meshtest.WaitFor(t, "peer web", func() bool { st, err := readStatus(ctx, sock); return err == nil && len(st.Peers) == 1 })

	webAddr := regexp.QuoteMeta(web.Addr().String())
	for _, target := range []string{"web", "WEB.", web.Addr().String()} {
		var b bytes.Buffer
		require.NoError(t, runPing(ctx, []string{"--socket", sock, "-c", "3", "-i", "20ms", target}, &b, io.Discard))
		require.Regexp(t, `^PING web \(`+webAddr+`\) through the mesh\n`+
			`reply from `+webAddr+`: seq=1 time=\d+\.\d{3} ms\n`+
			`reply from `+webAddr+`: seq=2 time=\d+\.\d{3} ms\n`+
			`reply from `+webAddr+`: seq=3 time=\d+\.\d{3} ms\n`+
			`--- web \(`+webAddr+`\) ping statistics ---\n`+
			`3 sent, 3 received, 0% loss, rtt min/avg/max = [\d.]+ ms/[\d.]+ ms/[\d.]+ ms\n$`, b.String())
	}
	for _, tc := range []struct{ target, want string }{
		{"192.0.2.1", "ping 192.0.2.1: no route to 192.0.2.1 in the mesh"},
		{"nobody", `no member of the zone is called "nobody"`},
	} {
		var b bytes.Buffer
		err := runPing(ctx, []string{"--socket", sock, "-c", "1", tc.target}, &b, io.Discard)
		require.ErrorContains(t, err, tc.want)
	}
	// Usage errors.
	for _, args := range [][]string{{}, {"-c", "0", "web"}, {"-i", "1ms", "web"}, {"a", "b"}} {
		err := runPing(ctx, append([]string{"--socket", sock}, args...), io.Discard, io.Discard)
		var ue *usageError
		require.ErrorAs(t, err, &ue, "%v", args)
	}
	cancel()
	require.NoError(t, <-done, errOut.String())
	err := runPing(context.Background(), []string{"--socket", sock, "web"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "no agent is running")
}

// fakeAgent is an agentAPI with a fixed status and a ping function.
type fakeAgent struct {
	st   mesh.Status
	ping func(context.Context, netip.Addr) (time.Duration, error)
}

func (f *fakeAgent) Status() mesh.Status                                       { return f.st }
func (f *fakeAgent) AdvertisePrefix(ctx context.Context, p netip.Prefix) error { return nil }
func (f *fakeAgent) ReleasePrefix(ctx context.Context, p netip.Prefix) error   { return nil }
func (f *fakeAgent) Ping(ctx context.Context, a netip.Addr) (time.Duration, error) {
	return f.ping(ctx, a)
}

// serveFake serves a status socket for a fakeAgent until the test ends.
func serveFake(t *testing.T, st mesh.Status, ping func(context.Context, netip.Addr) (time.Duration, error)) (string, *statusServer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	srv, err := serveStatus(sock, &fakeAgent{st: st, ping: ping})
	require.NoError(t, err)
	t.Cleanup(func() { srv.Close() })
	return sock, srv
}

// TestPingLossAndInterrupt: lost replies are reported per sequence number
// and in the loss figure; Ctrl-C (ctx) ends the ping with the statistics;
// closing the agent ends a running ping.
func TestPingLossAndInterrupt(t *testing.T) {
	a := netip.MustParseAddr("100.64.0.9")
	st := mesh.Status{Self: mesh.SelfStatus{Hostname: "me", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}},
		Peers: []mesh.PeerStatus{{Hostname: "flaky", Addrs: []netip.Addr{a}}, {Hostname: "twin", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.3")}},
			{Hostname: "twin", Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.4")}}}}
	n := 0
	sock, srv := serveFake(t, st, func(ctx context.Context, addr netip.Addr) (time.Duration, error) {
		n++
		if n%2 == 0 {
			<-ctx.Done()
			return 0, ctx.Err()
		}
		return 1500 * time.Microsecond, nil
	})
	var b bytes.Buffer
	require.NoError(t, runPing(context.Background(), []string{"--socket", sock, "-c", "4", "-i", "10ms", "-W", "20ms", "flaky"}, &b, io.Discard))
	require.Regexp(t, `reply from 100\.64\.0\.9: seq=1 time=1\.500 ms\nno reply from 100\.64\.0\.9: seq=2: context deadline exceeded\n`, b.String())
	require.Contains(t, b.String(), "4 sent, 2 received, 50% loss, rtt min/avg/max = 1.500 ms/1.500 ms/1.500 ms\n")

	err := runPing(context.Background(), []string{"--socket", sock, "twin"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, `2 members are called "twin" (100.64.0.3, 100.64.0.4): ping one of their addresses`)

	ctx, cancel := context.WithCancel(context.Background())
	var out joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runPing(ctx, []string{"--socket", sock, "-c", "1000", "-i", "10ms", "100.64.0.9"}, &out, io.Discard)
	}()
	meshtest.WaitFor(t, "a reply", func() bool { return bytes.Contains([]byte(out.String()), []byte("seq=3")) })
	cancel()
	require.NoError(t, <-done)
	require.Regexp(t, `\d+ sent, \d+ received, \d+% loss`, out.String())

	// The agent stopping ends a running ping (and Close does not wait
	// for the thousand pings).
	out = joinOutput{}
	go func() {
		done <- runPing(context.Background(), []string{"--socket", sock, "-c", "1000", "-i", "10ms", "100.64.0.9"}, &out, io.Discard)
	}()
	meshtest.WaitFor(t, "a reply", func() bool { return bytes.Contains([]byte(out.String()), []byte("seq=3")) })
	closed := time.Now()
	require.NoError(t, srv.Close())
	require.Less(t, time.Since(closed), 5*time.Second)
	require.NoError(t, <-done, "replies came: the ping ends with its statistics")
	require.Regexp(t, `\d+ sent, \d+ received`, out.String())
}

// TestStatusSocketProtocol: a client that sends no request gets the
// status (the first protocol); an unknown request is answered with an
// error naming the known ones.
func TestStatusSocketProtocol(t *testing.T) {
	sock, _ := serveFake(t, mesh.Status{Self: mesh.SelfStatus{Hostname: "me"}}, nil)
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	var st mesh.Status
	require.NoError(t, json.NewDecoder(c).Decode(&st))
	require.Equal(t, "me", st.Self.Hostname)
	c.Close()

	r, err := callAgent(context.Background(), sock, agentRequest{Op: "advertise"})
	require.NoError(t, err)
	require.Contains(t, r.Error, `unknown request "advertise"`)
}

// TestStatusJSON pins the documented format of `wiremesh status --json`
// (docs/STATUS-JSON.md).
func TestStatusJSON(t *testing.T) {
	key := api.Key{1}
	hs := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := mesh.Status{
		Self: mesh.SelfStatus{DeviceID: "dev1", Hostname: "node1", Zone: "default", PublicKey: key, Mode: mesh.Kernel, Interface: "wg0",
			Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.1")}, ZoneIPv4: netip.MustParsePrefix("100.64.0.0/16"), ListenPort: 51820,
			NAT: api.NATEndpointIndependent, Relay: true},
		ControlConnected: true, Revision: 7,
		Peers: []mesh.PeerStatus{
			{Hostname: "node2", PublicKey: key, Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.2")},
				Prefixes: []netip.Prefix{netip.MustParsePrefix("172.28.0.0/24")}, Endpoint: netip.MustParseAddrPort("192.0.2.12:51820"),
				LastHandshake: hs, RxBytes: 1536, TxBytes: 10, Online: true, LastSeen: hs, Path: mesh.PathDirect},
			{Hostname: "spoke", PublicKey: key, Addrs: []netip.Addr{netip.MustParseAddr("100.64.0.3")}},
		},
	}
	b, err := json.MarshalIndent(statusJSONOf(st), "", "  ")
	require.NoError(t, err)
	require.JSONEq(t, `{
  "format_version": 1,
  "self": {"device_id": "dev1", "hostname": "node1", "zone": "default", "public_key": "`+key.String()+`",
    "addresses": ["100.64.0.1"], "prefixes": [], "zone_ipv4": "100.64.0.0/16", "zone_ipv6": null,
    "listen_port": 51820, "endpoints": [], "mode": "kernel", "interface": "wg0",
    "nat": "endpoint-independent", "relay": true},
  "peers": [
    {"hostname": "node2", "public_key": "`+key.String()+`", "addresses": ["100.64.0.2"], "prefixes": ["172.28.0.0/24"],
     "path": "direct", "endpoint": "192.0.2.12:51820", "last_handshake": "2026-01-02T03:04:05Z", "online": true, "last_seen": "2026-01-02T03:04:05Z",
     "rx_bytes": 1536, "tx_bytes": 10, "trimmed": false},
    {"hostname": "spoke", "public_key": "`+key.String()+`", "addresses": ["100.64.0.3"], "prefixes": [],
     "path": null, "endpoint": null, "last_handshake": null, "online": false, "last_seen": null, "rx_bytes": 0, "tx_bytes": 0, "trimmed": false}
  ],
  "control_connected": true, "revision": 7, "events_dropped": 0, "skipped_routes": [], "filter": null
}`, string(b))

	st.Filter = mesh.FilterStatus{Active: true, Dropped: 3, Rules: []mesh.FilterRuleStatus{{Rule: 2,
		Src: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32")}, Dst: []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")},
		Proto: "tcp", Ports: []api.PortRange{{First: 80, Last: 80}, {First: 8000, Last: 8099}}, Accepted: 5}}}
	b, err = json.Marshal(statusJSONOf(st))
	require.NoError(t, err)
	require.Contains(t, string(b), `"filter":{"rules":[{"rule":2,"src":["100.64.0.3/32"],"dst":["172.24.0.0/24"],"proto":"tcp","ports":["80","8000-8099"],"accepted":5}],"dropped":3}`)

	b, err = json.Marshal(statusJSONOf(mesh.Status{Self: mesh.SelfStatus{Mode: mesh.Userspace}}))
	require.NoError(t, err)
	require.Contains(t, string(b), `"peers":[]`)
	require.Contains(t, string(b), `"mode":"userspace","interface":null,"nat":null,"relay":false`)
}
