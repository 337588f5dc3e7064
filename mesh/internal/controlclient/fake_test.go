package controlclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeService implements just enough of the coordination protocol to test
// the client: it verifies registration proofs, rejects replayed
// proofs, checks bearer tokens and serves watch streams.
type fakeService struct {
	t          *testing.T
	srv        *httptest.Server
	priv, pub  api.Key
	joinSecret string
	devToken   string

	// hook, when set, runs first; returning true means it answered.
	hook func(w http.ResponseWriter, r *http.Request) bool
	// watch serves GET /v1/zones/{zone}/watch after the token check.
	watch func(w http.ResponseWriter, r *http.Request)

	mu struct {
		sync.Mutex
		hits        map[string]int // "METHOD /path" → requests that reached the handler
		registers   []api.RegisterRequest
		proofs      map[string]bool // proofs seen: a replay is refused, like the real service
		failNext503 int             // answer the next N verified registrations with 503
		released    []string
		auth        []string // Authorization headers seen, in order
	}
}

func newKey(t *testing.T) api.Key {
	t.Helper()
	var k api.Key
	_, err := rand.Read(k[:])
	require.NoError(t, err)
	return k
}

func newSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return api.JoinTokenPrefix + hex.EncodeToString(b)
}

// startFake starts a fake service, TLS or plain HTTP, on 127.0.0.1.
func startFake(t *testing.T, useTLS bool) *fakeService {
	t.Helper()
	f := &fakeService{t: t, joinSecret: newSecret(t), devToken: api.DeviceTokenPrefix + "0123456789abcdef0123456789abcdef"}
	f.priv = newKey(t)
	f.pub = api.PublicKey(f.priv)
	f.mu.hits = map[string]int{}
	f.mu.proofs = map[string]bool{}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, api.Info{Version: "test", PublicKey: f.pub, DefaultZone: api.DefaultZone, MaxClockSkewSeconds: 60})
	})
	mux.HandleFunc("POST /v1/devices", f.register)
	mux.HandleFunc("GET /v1/devices/self", f.withDevice(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, f.device())
	}))
	mux.HandleFunc("PATCH /v1/devices/self", f.withDevice(func(w http.ResponseWriter, r *http.Request) {
		var req api.UpdateSelfRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, api.CodeBadRequest, err.Error())
			return
		}
		d := f.device()
		if req.Hostname != nil {
			d.Hostname = *req.Hostname
		}
		if req.Endpoints != nil {
			d.Endpoints = *req.Endpoints
		}
		for _, s := range req.AddChildPrefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				writeErr(w, api.CodeInvalidPrefix, err.Error())
				return
			}
			d.ChildPrefixes = append(d.ChildPrefixes, p)
		}
		writeJSON(w, 200, d)
	}))
	mux.HandleFunc("DELETE /v1/devices/self/prefixes/{prefix...}", f.withDevice(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.mu.released = append(f.mu.released, r.PathValue("prefix"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	mux.HandleFunc("GET /v1/zones/{zone}/watch", f.withDevice(func(w http.ResponseWriter, r *http.Request) {
		if f.watch == nil {
			writeErr(w, api.CodeNotFound, "no watch")
			return
		}
		f.watch(w, r)
	}))

	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.mu.hits[r.Method+" "+r.URL.Path]++
		f.mu.auth = append(f.mu.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		if f.hook != nil && f.hook(w, r) {
			return
		}
		mux.ServeHTTP(w, r)
	})
	f.srv = httptest.NewUnstartedServer(h)
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	if useTLS {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeService) register(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+f.joinSecret {
		writeErr(w, api.CodeUnauthorized, "bad join token")
		return
	}
	var req api.RegisterRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)).Decode(&req); err != nil {
		writeErr(w, api.CodeBadRequest, err.Error())
		return
	}
	if err := req.Verify(f.priv, api.JoinTokenHash(f.joinSecret)); err != nil {
		writeErr(w, api.CodeUnauthorized, err.Error())
		return
	}
	if d := time.Now().Unix() - req.Timestamp; d > 60 || d < -60 {
		writeErr(w, api.CodeUnauthorized, "timestamp skew")
		return
	}
	f.mu.Lock()
	if f.mu.proofs[string(req.Proof)] {
		f.mu.Unlock()
		writeErr(w, api.CodeUnauthorized, "replayed registration")
		return
	}
	f.mu.proofs[string(req.Proof)] = true
	f.mu.registers = append(f.mu.registers, req)
	fail := f.mu.failNext503 > 0
	if fail {
		f.mu.failNext503--
	}
	f.mu.Unlock()
	if fail {
		writeErr(w, api.CodeUnavailable, "try again")
		return
	}
	var prefixes []netip.Prefix
	for _, s := range req.ChildPrefixes {
		prefixes = append(prefixes, netip.MustParsePrefix(s))
	}
	writeJSON(w, http.StatusCreated, api.RegisterResponse{
		DeviceID:      "dev1",
		Zone:          api.DefaultZone,
		Hostname:      req.Hostname,
		IPv4:          netip.MustParseAddr("100.64.0.1"),
		IPv6:          netip.MustParseAddr("fd7a::1"),
		ZoneIPv4:      netip.MustParsePrefix("100.64.0.0/16"),
		ZoneIPv6:      netip.MustParsePrefix("fd7a::/64"),
		ChildPrefixes: prefixes,
		DeviceToken:   f.devToken,
	})
}

func (f *fakeService) withDevice(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+f.devToken {
			writeErr(w, api.CodeUnauthorized, "bad device token")
			return
		}
		h(w, r)
	}
}

func (f *fakeService) device() api.Device {
	return api.Device{ID: "dev1", Zone: api.DefaultZone, Hostname: "h1", IPv4: netip.MustParseAddr("100.64.0.1")}
}

func (f *fakeService) hits(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.hits[key]
}

func (f *fakeService) totalHits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.mu.hits {
		n += v
	}
	return n
}

func (f *fakeService) registers() []api.RegisterRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.RegisterRequest(nil), f.mu.registers...)
}

// token is the join token for this service, with the certificate
// fingerprint when it serves TLS.
func (f *fakeService) token() string {
	if f.srv.Certificate() == nil {
		return f.joinSecret
	}
	return api.FormatJoinToken(f.joinSecret, tlspin.Fingerprint(f.srv.Certificate().Raw))
}

// client returns a Client for f, closed at the end of the test.
func (f *fakeService) client(t *testing.T, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{URL: f.srv.URL, Token: f.token()}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code, msg string) {
	writeJSON(w, api.StatusForCode(code), api.Error{Code: code, Message: msg})
}

// writeStatus answers with status and the error code that goes with it.
func writeStatus(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, api.Error{Code: codeForStatus(status), Message: msg})
}

// countingDial is a Config.dial that counts dials and really dials (tests
// only ever point it at 127.0.0.1).
func countingDial(n *atomic.Int32) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
}
