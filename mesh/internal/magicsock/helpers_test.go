package magicsock

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MAGICSOCK_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("t", t.Name())
}

// service is an in-process coordination service (plain HTTP, loopback).
type service struct {
	svc *control.Service
	tok string
}

func startService(t testing.TB) *service {
	t.Helper()
	svc, err := control.Start(context.Background(), control.Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		STUNListen: "127.0.0.1:0", InsecureHTTP: true})
	require.NoError(t, err)
	t.Cleanup(func() { svc.Close() })
	tok, err := svc.CreateJoinToken(context.Background(), api.DefaultZone, true, 0)
	require.NoError(t, err)
	return &service{svc: svc, tok: tok}
}

// register registers priv and returns the device token.
func (s *service) register(t testing.TB, priv api.Key, name string) string {
	t.Helper()
	req := api.RegisterRequest{PublicKey: api.PublicKey(priv), Hostname: name, Timestamp: time.Now().Unix()}
	var info api.Info
	s.call(t, "GET", "/v1/info", "", nil, &info)
	secret, _, err := api.ParseJoinToken(s.tok)
	require.NoError(t, err)
	require.NoError(t, req.Sign(priv, info.PublicKey, api.JoinTokenHash(secret)))
	var resp api.RegisterResponse
	s.call(t, "POST", "/v1/devices", s.tok, req, &resp)
	return resp.DeviceToken
}

func (s *service) call(t testing.TB, method, path, tok string, body, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.svc.URL()+path, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Less(t, resp.StatusCode, 300, "%s %s", method, path)
	if out != nil {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
	}
}

func (s *service) dialer(tok string) RelayDialer {
	url := "ws" + strings.TrimPrefix(s.svc.URL(), "http") + api.RelayPath
	return func(ctx context.Context) (*websocket.Conn, error) {
		ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{
			HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		return ws, err
	}
}

// node is a wireguard-go device over a Conn and a channel TUN.
type node struct {
	name  string
	priv  api.Key
	pub   api.Key
	conn  *Conn
	dev   *device.Device
	tun   *tuntest.ChannelTUN
	addr  netip.Addr
	port  uint16
	peers []PeerInfo
}

func newKey() api.Key {
	var k api.Key
	_, _ = rand.Read(k[:])
	return k
}

// newNode starts a device; cfg.PrivateKey is filled in.
func newNode(t testing.TB, i int, cfg Config) *node {
	t.Helper()
	n := &node{name: fmt.Sprintf("n%d", i), addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), tun: tuntest.NewChannelTUN()}
	if cfg.PrivateKey.IsZero() {
		cfg.PrivateKey = newKey()
	}
	n.priv, n.pub = cfg.PrivateKey, api.PublicKey(cfg.PrivateKey)
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	if cfg.LocalAddrs == nil {
		cfg.LocalAddrs = func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("127.0.0.1")} }
	}
	n.conn = New(cfg)
	n.dev = device.NewDevice(n.tun.TUN(), n.conn, device.NewLogger(device.LogLevelSilent, ""))
	require.NoError(t, n.dev.IpcSet("private_key="+hex.EncodeToString(n.priv[:])+"\nlisten_port=0\n"))
	require.NoError(t, n.dev.Up())
	n.port = n.listenPort(t)
	t.Cleanup(n.dev.Close)
	return n
}

func (n *node) listenPort(t testing.TB) uint16 {
	s, err := n.dev.IpcGet()
	require.NoError(t, err)
	var port uint16
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			fmt.Sscan(v, &port)
		}
	}
	require.NotZero(t, port)
	return port
}

// local is n's loopback candidate.
func (n *node) local() []api.Candidate {
	return []api.Candidate{{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port), Type: api.CandidateLocal}}
}

// addPeer tells n about p with candidates cs and configures the device.
func (n *node) addPeer(t testing.TB, p *node, cs []api.Candidate) {
	t.Helper()
	n.setPeer(p, cs)
	cfg := fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s/32\n", hex.EncodeToString(p.pub[:]), EndpointString(p.pub), p.addr)
	require.NoError(t, n.dev.IpcSet(cfg))
}

// setPeer changes what n's Conn knows about p's candidates.
func (n *node) setPeer(p *node, cs []api.Candidate) {
	var next []PeerInfo
	for _, pi := range n.peers {
		if pi.Key != p.pub {
			next = append(next, pi)
		}
	}
	n.peers = append(next, PeerInfo{Key: p.pub, Name: p.name, Candidates: cs})
	n.conn.SetPeers(n.peers)
}

// ping sends an ICMP echo from a to b through the tunnel until it arrives.
func ping(t testing.TB, a, b *node) {
	t.Helper()
	pkt := tuntest.Ping(b.addr, a.addr)
	deadline := time.After(20 * time.Second)
	for {
		select {
		case a.tun.Outbound <- pkt:
		case <-deadline:
			t.Fatalf("%s cannot send towards %s", a.name, b.name)
		}
		select {
		case got := <-b.tun.Inbound:
			require.Equal(t, pkt, got)
			return
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no ping from %s reached %s within 20s", a.name, b.name)
		}
	}
}

func waitPath(t testing.TB, n, p *node, want string) PathInfo {
	t.Helper()
	var got PathInfo
	require.Eventually(t, func() bool {
		got = n.conn.PeerPath(p.pub)
		return got.Path == want
	}, 20*time.Second, 10*time.Millisecond, "%s's path to %s: want %q", n.name, p.name, want)
	return got
}

func pubOf(k api.Key) api.Key { return api.PublicKey(k) }
