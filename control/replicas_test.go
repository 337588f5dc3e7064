package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store/postgres"
	"github.com/wiremesh/wiremesh/control/store/postgres/pgtest"
	"github.com/wiremesh/wiremesh/control/store/storetest"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// startReplica starts a service on the PostgreSQL database dsn, closed
// when t ends.
func startReplica(t *testing.T, dsn string, o Options) *Service {
	t.Helper()
	o.Store = dsn
	s := startService(t, o)
	t.Cleanup(func() { s.Close() })
	return s
}

// httpClient trusts s's certificate (or speaks plain HTTP).
func httpClient(t *testing.T, s *Service) *http.Client {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlspin.ClientConfig(s.Fingerprint(), nil)}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// post sends a JSON request without failing the test (usable from any
// goroutine) and decodes a 2xx answer into out.
func post(hc *http.Client, method, url, token string, body, out any) (int, http.Header, error) {
	return postFrom(hc, netip.Addr{}, method, url, token, body, out)
}

// postFrom is post on behalf of client (sent as X-Forwarded-For, for a
// service that trusts the test as its proxy), when valid.
func postFrom(hc *http.Client, client netip.Addr, method, url, token string, body, out any) (int, http.Header, error) {
	j, err := json.Marshal(body)
	if err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequest(method, url, bytes.NewReader(j))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if client.IsValid() {
		req.Header.Set("X-Forwarded-For", client.String())
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, resp.Header, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, resp.Header, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	if out != nil {
		err = json.Unmarshal(b, out)
	}
	return resp.StatusCode, resp.Header, err
}

// signed returns a registration of a new device with join token tok,
// signed for service key pub.
func signed(t *testing.T, pub api.Key, tok, hostname string, prefixes ...string) api.RegisterRequest {
	t.Helper()
	secret, _, err := api.ParseJoinToken(tok)
	require.NoError(t, err)
	d := newDevice()
	r := api.RegisterRequest{PublicKey: d.pub, Hostname: hostname, ChildPrefixes: prefixes,
		Timestamp: time.Now().Unix(), Nonce: fmt.Sprintf("%x", d.pub[:8])}
	require.NoError(t, r.Sign(d.priv, pub, api.JoinTokenHash(secret)))
	return r
}

// TestReplicasShareIdentity: replicas on one database serve with the same
// key, admin token and certificate, created by whichever started first;
// a data directory gets copies for the admin commands.
func TestReplicasShareIdentity(t *testing.T) {
	dsn := pgtest.DB(t)
	dir := t.TempDir()
	a := startReplica(t, dsn, Options{DataDir: dir})
	b := startReplica(t, dsn, Options{})
	require.Equal(t, a.Fingerprint(), b.Fingerprint())
	require.NotEmpty(t, a.Fingerprint())
	require.Equal(t, a.AdminToken(), b.AdminToken())
	require.Equal(t, a.srv.PublicKey(), b.srv.PublicKey())
	require.Contains(t, b.StoreName(), "xxxxx", "the password is not shown")

	tok, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
	require.NoError(t, err)
	require.Equal(t, a.AdminToken()+"\n", string(tok))
	fp, err := tlspin.FromCertFile(filepath.Join(dir, TLSCertFile))
	require.NoError(t, err)
	require.Equal(t, a.Fingerprint(), fp)
	_, err = os.Stat(filepath.Join(dir, TLSKeyFile))
	require.ErrorIs(t, err, os.ErrNotExist, "the key stays in the database")

	// A token from one replica registers on the other.
	jt, err := a.CreateJoinToken(t.Context(), api.DefaultZone, false, time.Hour)
	require.NoError(t, err)
	resp := registerTLS(t, b, jt, signed(t, b.srv.PublicKey(), jt, "h"))
	require.Equal(t, netip.MustParseAddr("100.64.0.1"), resp.IPv4)

	// A SQLite service's data directory is not reused.
	sqliteDir := t.TempDir()
	sq := startService(t, Options{DataDir: sqliteDir, InsecureHTTP: true})
	require.NoError(t, sq.Close())
	_, err = Start(t.Context(), Options{DataDir: sqliteDir, Store: dsn, Listen: "127.0.0.1:0", STUNListen: "off"})
	require.ErrorContains(t, err, "holds the state of a SQLite service")
}

func TestReplicaStartErrors(t *testing.T) {
	dsn := pgtest.DB(t)
	tests := []struct {
		name, store, want string
	}{
		{"not postgres", "mysql://x", "want a postgres://"},
		{"unreachable", "postgres://u:secretpw@/db?host=" + t.TempDir() + "&connect_timeout=5", "cannot reach"},
	}
	if !pgtest.Shared(t).External() {
		tests = append(tests, struct{ name, store, want string }{"wrong password",
			replacePassword(t, dsn, "secretpw"), "authentication refused"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Start(t.Context(), Options{Store: tt.store, Listen: "127.0.0.1:0", STUNListen: "off"})
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "secretpw")
		})
	}
}

func replacePassword(t *testing.T, dsn, pw string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String()
}

// TestReplicasRegisterConcurrently: two replicas registering 500 members
// at once, each with a single-use token of its own and a child prefix
// that overlaps another member's: every member gets a unique address, at
// most one of each overlapping pair its prefix, and every acknowledged
// registration is there afterwards.
func TestReplicasRegisterConcurrently(t *testing.T) {
	dsn := pgtest.DB(t)
	// Behind a proxy (the test), each member from an address of its own:
	// the per-client registration limit does not throttle 500 members.
	proxied := Options{InsecureHTTP: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}
	reps := []*Service{startReplica(t, dsn, proxied), startReplica(t, dsn, proxied)}
	const n = 500
	toks := make([]string, n)
	for i := range toks {
		var err error
		toks[i], err = reps[i%2].CreateJoinToken(t.Context(), api.DefaultZone, false, time.Hour)
		require.NoError(t, err)
	}
	pub := reps[0].srv.PublicKey()
	reqs := make([]api.RegisterRequest, n)
	for i := range reqs {
		// Members 2k and 2k+1 ask for 10.k.0.0/16 and 10.k.1.0/24.
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 2), byte(i % 2), 0}), 16+8*(i%2))
		reqs[i] = signed(t, pub, toks[i], fmt.Sprintf("m%03d", i), p.String())
	}
	hcs := []*http.Client{httpClient(t, reps[0]), httpClient(t, reps[1])}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked = map[string]api.RegisterResponse{}
		errs  []error
		sem   = make(chan struct{}, 32)
	)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var resp api.RegisterResponse
			member := netip.AddrFrom4([4]byte{192, 0, byte(2 + i/250), byte(i % 250)})
			_, _, err := postFrom(hcs[i%2], member, "POST", reps[i%2].URL()+"/v1/devices", toks[i], reqs[i], &resp)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			acked[resp.DeviceID] = resp
		})
	}
	wg.Wait()
	// A member that lost its prefix to another got prefix_conflict: all
	// others are acknowledged.
	conflicts := 0
	for _, err := range errs {
		require.ErrorContains(t, err, api.CodePrefixConflict)
		conflicts++
	}
	require.Len(t, acked, n-conflicts)
	require.Equal(t, n/2, len(acked), "one member of each overlapping pair")

	var devs []api.Device
	_, _, err := post(hcs[1], "GET", reps[1].URL()+"/v1/devices?zone=default", reps[1].AdminToken(), nil, &devs)
	require.NoError(t, err)
	require.Len(t, devs, len(acked), "every acknowledged registration is there")
	addrs := map[netip.Addr]bool{}
	var prefixes []netip.Prefix
	for _, d := range devs {
		r, ok := acked[d.ID]
		require.True(t, ok, "device %s was not acknowledged", d.ID)
		require.Equal(t, r.IPv4, d.IPv4)
		require.False(t, addrs[d.IPv4], "address %s twice", d.IPv4)
		addrs[d.IPv4] = true
		prefixes = append(prefixes, d.ChildPrefixes...)
	}
	require.Len(t, prefixes, len(acked))
	for i, p := range prefixes {
		for _, q := range prefixes[i+1:] {
			require.False(t, p.Overlaps(q), "%s overlaps %s", p, q)
		}
	}
}

// TestReplicaNotificationWakesHub: with no poll, a hub learns of a change
// committed through another store on the same database only through
// LISTEN/NOTIFY.
func TestReplicaNotificationWakesHub(t *testing.T) {
	dsn := pgtest.DB(t)
	mine, err := postgres.Open(t.Context(), dsn)
	require.NoError(t, err)
	defer mine.Close()
	theirs, err := postgres.Open(t.Context(), dsn)
	require.NoError(t, err)
	defer theirs.Close()
	// Wrapped as the server wraps its store.
	h := newHub(newTimedStore(mine, newMetrics().storeLatency), nil, newMetrics(), 0)
	defer h.close()
	sub, err := h.subscribe(t.Context(), api.DefaultZone)
	require.NoError(t, err)

	e := &storetest.Env{T: t, S: theirs, Ctx: t.Context()}
	d := e.MustRegister(api.DefaultZone, "elsewhere")
	select {
	case <-sub.wake:
		evs, _ := sub.take()
		require.NotEmpty(t, evs)
		require.Contains(t, string(evs[0].line), d.ID)
	case <-time.After(15 * time.Second):
		t.Fatal("the hub was not woken by the other store's commit")
	}
}

// TestReplicaDatabaseRestart: the database restarts under a running
// service. Meanwhile requests get 503 with Retry-After; afterwards the
// service works again without a restart, a watch stream opened before
// sees the changes made after, and nothing acknowledged is lost.
func TestReplicaDatabaseRestart(t *testing.T) {
	srv := pgtest.Own(t)
	_, dsn, err := srv.NewDatabase(t.Context())
	require.NoError(t, err)
	svc := startReplica(t, dsn, Options{InsecureHTTP: true, HeartbeatInterval: time.Hour})
	hc := httpClient(t, svc)
	pub := svc.srv.PublicKey()
	tok, err := svc.CreateJoinToken(t.Context(), api.DefaultZone, true, time.Hour)
	require.NoError(t, err)
	var before api.RegisterResponse
	_, _, err = post(hc, "POST", svc.URL()+"/v1/devices", tok, signed(t, pub, tok, "before"), &before)
	require.NoError(t, err)

	events := watchLines(t, svc.URL(), before.DeviceToken)
	require.Contains(t, <-events, `"snapshot"`)

	require.NoError(t, srv.StopServer(t.Context(), "immediate"))
	code, hdr, err := post(hc, "GET", svc.URL()+"/v1/devices/self", before.DeviceToken, nil, nil)
	require.Equal(t, http.StatusServiceUnavailable, code, "%v", err)
	require.Equal(t, "2", hdr.Get("Retry-After"))
	code, hdr, err = post(hc, "POST", svc.URL()+"/v1/devices", tok, signed(t, pub, tok, "during"), nil)
	require.Equal(t, http.StatusServiceUnavailable, code, "%v", err)
	require.NotEmpty(t, hdr.Get("Retry-After"))

	require.NoError(t, srv.StartServer(t.Context()))
	require.Eventually(t, func() bool {
		code, _, _ := post(hc, "GET", svc.URL()+"/v1/devices/self", before.DeviceToken, nil, nil)
		return code == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond)
	var after api.RegisterResponse
	_, _, err = post(hc, "POST", svc.URL()+"/v1/devices", tok, signed(t, pub, tok, "after"), &after)
	require.NoError(t, err)
	require.Equal(t, before.IPv4.Next(), after.IPv4, "the refused registration took nothing")
	waitLine(t, events, after.DeviceID)
	var devs []api.Device
	_, _, err = post(hc, "GET", svc.URL()+"/v1/devices", svc.AdminToken(), nil, &devs)
	require.NoError(t, err)
	require.Len(t, devs, 2)
}

// watchLines streams a device's watch lines until t ends. The channel is
// closed when the stream ends.
func watchLines(t *testing.T, base, deviceToken string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/v1/zones/default/watch", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+deviceToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	lines := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		dec := json.NewDecoder(resp.Body)
		for {
			var raw json.RawMessage
			if dec.Decode(&raw) != nil {
				return
			}
			lines <- string(raw)
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return lines
}

// waitLine waits for a line containing substr.
func waitLine(t *testing.T, lines <-chan string, substr string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "the stream ended before %q", substr)
			if strings.Contains(l, substr) {
				return
			}
		case <-timeout:
			t.Fatalf("no line with %q within 30s", substr)
		}
	}
}

// TestReplicaRelayEndsForChangesElsewhere: a device deleted through one
// replica loses its relay connection at the other, which learns it from
// the shared change log though nobody watches the zone there; another
// member's connection stays.
func TestReplicaRelayEndsForChangesElsewhere(t *testing.T) {
	dsn := pgtest.DB(t)
	a := startReplica(t, dsn, Options{InsecureHTTP: true})
	b := startReplica(t, dsn, Options{InsecureHTTP: true})
	jt, err := a.CreateJoinToken(t.Context(), api.DefaultZone, true, time.Hour)
	require.NoError(t, err)
	dial := func(tok string) *websocket.Conn {
		ws, _, err := websocket.Dial(t.Context(), "ws"+strings.TrimPrefix(b.URL(), "http")+api.RelayPath,
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		require.NoError(t, err)
		t.Cleanup(func() { ws.CloseNow() })
		return ws
	}
	gone := registerTLS(t, a, jt, signed(t, a.srv.PublicKey(), jt, "gone"))
	stays := registerTLS(t, a, jt, signed(t, a.srv.PublicKey(), jt, "stays"))
	wg, ws := dial(gone.DeviceToken), dial(stays.DeviceToken)

	hc := httpClient(t, a)
	code, ae := callURL(t, hc, "DELETE", a.URL()+"/v1/devices/"+gone.DeviceID, a.AdminToken(), nil, nil)
	require.Nil(t, ae)
	require.Equal(t, http.StatusNoContent, code)
	requireRelayEnds(t, wg, "deleted through the other replica")

	// The other member's connection is still there: a message to itself
	// is dropped, not a reason to close; its read still waits.
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	_, _, err = ws.Read(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "the other member's relay connection stays")
}
