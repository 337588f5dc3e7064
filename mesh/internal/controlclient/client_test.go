package controlclient

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

func TestRegisterAndDeviceCalls(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			f := startFake(t, useTLS)
			c := f.client(t, nil)
			ctx := context.Background()

			_, err := c.Self(ctx)
			require.ErrorIs(t, err, ErrNoDeviceToken)

			priv := newKey(t)
			ep := netip.MustParseAddrPort("127.0.0.1:51820")
			resp, err := c.Register(ctx, priv, api.RegisterRequest{
				Hostname:      "node1",
				ChildPrefixes: []string{"172.24.0.0/24"},
				Endpoints:     []netip.AddrPort{ep},
				Timestamp:     1, // overwritten
			})
			require.NoError(t, err)
			require.Equal(t, f.devToken, resp.DeviceToken)
			require.Equal(t, f.devToken, c.DeviceToken())
			require.Equal(t, netip.MustParseAddr("100.64.0.1"), resp.IPv4)
			require.Equal(t, []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")}, resp.ChildPrefixes)

			regs := f.registers()
			require.Len(t, regs, 1)
			require.NoError(t, regs[0].Verify(f.priv, api.JoinTokenHash(f.joinSecret)), "proof verifies server-side")
			require.Equal(t, api.PublicKey(priv), regs[0].PublicKey)
			require.Equal(t, []netip.AddrPort{ep}, regs[0].Endpoints)
			require.InDelta(t, time.Now().Unix(), regs[0].Timestamp, 5)
			require.Equal(t, 1, f.hits("GET /v1/info"))

			d, err := c.Self(ctx)
			require.NoError(t, err)
			require.Equal(t, "dev1", d.ID)

			host := "renamed"
			eps := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:4000")}
			d, err = c.UpdateSelf(ctx, api.UpdateSelfRequest{Hostname: &host, Endpoints: &eps, AddChildPrefixes: []string{"10.9.0.0/16"}})
			require.NoError(t, err)
			require.Equal(t, "renamed", d.Hostname)
			require.Equal(t, eps, d.Endpoints)
			require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, d.ChildPrefixes)

			require.NoError(t, c.ReleasePrefix(ctx, netip.MustParsePrefix("172.24.0.0/24")))
			require.NoError(t, c.ReleasePrefix(ctx, netip.MustParsePrefix("fd00:1::/64")))
			f.mu.Lock()
			require.Equal(t, []string{"172.24.0.0/24", "fd00:1::/64"}, f.mu.released)
			f.mu.Unlock()

			// A second registration reuses the cached Info, with a new timestamp.
			_, err = c.Register(ctx, priv, api.RegisterRequest{Hostname: "node1"})
			require.NoError(t, err)
			require.Equal(t, 1, f.hits("GET /v1/info"))
			require.Len(t, f.registers(), 2)
		})
	}
}

func TestRegisterInputErrors(t *testing.T) {
	f := startFake(t, false)
	c := f.client(t, nil)
	priv := newKey(t)
	_, err := c.Register(context.Background(), api.Key{}, api.RegisterRequest{})
	require.ErrorContains(t, err, "controlclient: register: device private key is zero")
	_, err = c.Register(context.Background(), priv, api.RegisterRequest{PublicKey: newKey(t)})
	require.ErrorContains(t, err, "does not belong to the private key")

	noTok := f.client(t, func(cfg *Config) { cfg.Token = "" })
	_, err = noTok.Register(context.Background(), priv, api.RegisterRequest{})
	require.ErrorIs(t, err, ErrNoJoinToken)
	require.Zero(t, f.totalHits())

	err = c.ReleasePrefix(context.Background(), netip.MustParsePrefix("10.0.0.1/24"))
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeInvalidPrefix, ae.Code)
	require.Contains(t, err.Error(), `"10.0.0.1/24" is not canonical`)
	require.Zero(t, f.totalHits())
}

func TestPinning(t *testing.T) {
	f := startFake(t, true)
	var dials atomic.Int32
	c := f.client(t, func(cfg *Config) { cfg.dial = countingDial(&dials) })
	info, err := c.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, f.pub, info.PublicKey)

	// Config.Fingerprint overrides the token's.
	wrong := bytes.Repeat([]byte{0xab}, 32)
	c2 := f.client(t, func(cfg *Config) {
		cfg.Token = api.FormatJoinToken(f.joinSecret, wrong)
		cfg.Fingerprint = tlspin.Fingerprint(f.srv.Certificate().Raw)
	})
	_, err = c2.Info(context.Background())
	require.NoError(t, err)
}

func TestPinningMismatch(t *testing.T) {
	f := startFake(t, true)
	wrong := bytes.Repeat([]byte{0xab}, 32)
	for name, mod := range map[string]func(*Config){
		"token":  func(cfg *Config) { cfg.Token = api.FormatJoinToken(f.joinSecret, wrong) },
		"config": func(cfg *Config) { cfg.Fingerprint = wrong },
	} {
		t.Run(name, func(t *testing.T) {
			var dials atomic.Int32
			c := f.client(t, func(cfg *Config) { mod(cfg); cfg.dial = countingDial(&dials) })
			_, err := c.Info(context.Background())
			var fm *tlspin.MismatchError
			require.ErrorAs(t, err, &fm)
			got := hex.EncodeToString(tlspin.Fingerprint(f.srv.Certificate().Raw))
			require.ErrorContains(t, err, "controlclient: info: ")
			require.ErrorContains(t, err, "service certificate fingerprint "+got+" does not match the pinned "+hex.EncodeToString(wrong))
			_, err = c.Register(context.Background(), newKey(t), api.RegisterRequest{})
			require.ErrorAs(t, err, &fm)
			require.Zero(t, f.totalHits(), "no request may reach the service")
			require.Equal(t, int32(2), dials.Load(), "a pin mismatch is not retried")
		})
	}
}

func TestTLSWithoutPin(t *testing.T) {
	f := startFake(t, true)
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	c := f.client(t, func(cfg *Config) { cfg.Token = f.joinSecret; cfg.RootCAs = pool })
	_, err := c.Info(context.Background())
	require.NoError(t, err)

	var dials atomic.Int32
	c2 := f.client(t, func(cfg *Config) { cfg.Token = f.joinSecret; cfg.dial = countingDial(&dials) })
	_, err = c2.Info(context.Background())
	require.Error(t, err)
	require.True(t, isCertError(err), "want a certificate error, got %v", err)
	require.Equal(t, int32(1), dials.Load(), "certificate errors are not retried")
	require.Equal(t, 1, f.totalHits(), "only the first client's request reached the service")
}

func TestNewURLChecks(t *testing.T) {
	secret := "wmj_0123456789abcdef0123456789abcdef"
	tests := []struct {
		name     string
		cfg      Config
		wantErr  string // "" = accepted
		wantBase string
	}{
		{name: "http non-loopback refused", cfg: Config{URL: "http://192.0.2.1:8443"}, wantErr: `service URL "http://192.0.2.1:8443": plain http:// to non-loopback host "192.0.2.1" is refused`},
		{name: "http name refused", cfg: Config{URL: "http://coord.example/"}, wantErr: "InsecureHTTP"},
		{name: "refusal redacts token", cfg: Config{URL: "http://192.0.2.1#" + secret}, wantErr: `"http://192.0.2.1#wmj_0123…"`},
		{name: "http loopback v4", cfg: Config{URL: "http://127.0.0.1:1"}, wantBase: "http://127.0.0.1:1"},
		{name: "http loopback v6", cfg: Config{URL: "http://[::1]:1/"}, wantBase: "http://[::1]:1"},
		{name: "http localhost", cfg: Config{URL: "http://LocalHost:1/base/"}, wantBase: "http://LocalHost:1/base"},
		{name: "http allowed explicitly", cfg: Config{URL: "http://192.0.2.1:8443", InsecureHTTP: true}, wantBase: "http://192.0.2.1:8443"},
		{name: "https", cfg: Config{URL: "https://192.0.2.1:8443#" + secret}, wantBase: "https://192.0.2.1:8443"},
		{name: "empty", cfg: Config{}, wantErr: "service URL is empty"},
		{name: "scheme", cfg: Config{URL: "ftp://h/"}, wantErr: `service URL "ftp://h/": scheme must be http or https`},
		{name: "no host", cfg: Config{URL: "https:///x"}, wantErr: "no host"},
		{name: "malformed redacted", cfg: Config{URL: "https://h:bad#" + secret}, wantErr: `service URL "https://h:bad#wmj_0123…": invalid port ":bad" after host`},
		{name: "query", cfg: Config{URL: "https://h/?a=b"}, wantErr: "query is not supported"},
		{name: "bad token in fragment", cfg: Config{URL: "https://h#wmj_nothex-nothex-nothex-nothex-nothex"}, wantErr: `join token "wmj_noth…"`},
		{name: "bad token", cfg: Config{URL: "https://h", Token: "secret-password-123"}, wantErr: `join token "secret-p…": not a wiremesh join token`},
		{name: "bad fingerprint", cfg: Config{URL: "https://h", Fingerprint: []byte{1, 2}}, wantErr: "certificate fingerprint: 2 bytes, want 32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.dial = func(context.Context, string, string) (net.Conn, error) {
				t.Errorf("New must not dial")
				return nil, errors.New("no dialing in this test")
			}
			c, err := New(tt.cfg)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				require.True(t, strings.HasPrefix(err.Error(), "controlclient: "), err.Error())
				require.NotContains(t, err.Error(), secret, "the token secret must be redacted")
				require.NotContains(t, err.Error(), "nothex-nothex-nothex")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantBase, c.base)
			c.Close()
		})
	}
}

// TestInsecureHTTPDialsOnlyThroughHook shows that an allowed non-loopback
// http:// URL is dialed through the transport (here a hook that refuses),
// and nothing leaves the machine.
func TestInsecureHTTPDialsOnlyThroughHook(t *testing.T) {
	var addrs []string
	c, err := New(Config{URL: "http://192.0.2.1:8443", InsecureHTTP: true, RetryMax: -1,
		dial: func(_ context.Context, network, addr string) (net.Conn, error) {
			addrs = append(addrs, network+" "+addr)
			return nil, errors.New("test dialer refuses")
		}})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Info(context.Background())
	require.ErrorContains(t, err, "controlclient: info: ")
	require.ErrorContains(t, err, "test dialer refuses")
	require.Equal(t, []string{"tcp 192.0.2.1:8443"}, addrs)
}

func TestTokenInFragment(t *testing.T) {
	f := startFake(t, true)
	c := f.client(t, func(cfg *Config) { cfg.URL = f.srv.URL + "#" + f.token(); cfg.Token = "" })
	_, err := c.Register(context.Background(), newKey(t), api.RegisterRequest{Hostname: "x"})
	require.NoError(t, err, "fragment token authorizes and pins")
	require.Equal(t, f.srv.URL, c.base)
	f.mu.Lock()
	require.Contains(t, f.mu.auth, "Bearer "+f.joinSecret, "only the secret is sent, not the fingerprint")
	f.mu.Unlock()

	// Config.Token overrides the fragment.
	other := newSecret(t)
	c2 := f.client(t, func(cfg *Config) {
		cfg.URL = f.srv.URL + "#" + api.FormatJoinToken(other, tlspin.Fingerprint(f.srv.Certificate().Raw))
	})
	_, err = c2.Register(context.Background(), newKey(t), api.RegisterRequest{Hostname: "y"})
	require.NoError(t, err)
	c3 := f.client(t, func(cfg *Config) {
		cfg.URL = f.srv.URL + "#" + f.token()
		cfg.Token = api.FormatJoinToken(other, tlspin.Fingerprint(f.srv.Certificate().Raw))
	})
	_, err = c3.Register(context.Background(), newKey(t), api.RegisterRequest{Hostname: "z"})
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
}

func TestRetries(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int // answers before the real handler; 0 = pass through
		retryMax int
		wantHits int
		wantCode string // "" = success
	}{
		{name: "400 not retried", statuses: []int{400}, wantHits: 1, wantCode: api.CodeBadRequest},
		{name: "401 not retried", statuses: []int{401}, wantHits: 1, wantCode: api.CodeUnauthorized},
		{name: "404 not retried", statuses: []int{404}, wantHits: 1, wantCode: api.CodeNotFound},
		{name: "409 not retried", statuses: []int{409}, wantHits: 1, wantCode: api.CodeConflict},
		{name: "501 not retried", statuses: []int{501}, wantHits: 1, wantCode: api.CodeInternal},
		{name: "503 retried then ok", statuses: []int{503, 503}, wantHits: 3},
		{name: "500 retried then ok", statuses: []int{500}, wantHits: 2},
		{name: "429 retried then ok", statuses: []int{429}, wantHits: 2},
		{name: "503 until retries run out", statuses: []int{503, 503, 503, 503}, retryMax: 2, wantHits: 3, wantCode: api.CodeUnavailable},
		{name: "no retries", statuses: []int{503}, retryMax: -1, wantHits: 1, wantCode: api.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, false)
			var n atomic.Int32
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				i := int(n.Add(1)) - 1
				if i < len(tt.statuses) && tt.statuses[i] != 0 {
					w.Header().Set("Retry-After", "0")
					writeStatus(w, tt.statuses[i], "injected")
					return true
				}
				return false
			}
			c := f.client(t, func(cfg *Config) { cfg.RetryMax = tt.retryMax })
			c.SetDeviceToken(f.devToken)
			_, err := c.Self(context.Background())
			require.Equal(t, tt.wantHits, f.hits("GET /v1/devices/self"))
			if tt.wantCode == "" {
				require.NoError(t, err)
				return
			}
			var ae *api.Error
			require.ErrorAs(t, err, &ae)
			require.Equal(t, tt.wantCode, ae.Code)
			require.Equal(t, tt.statuses[0], ae.Status)
			require.ErrorContains(t, err, "controlclient: self: ")
		})
	}
}

func TestRegisterRetryResigns(t *testing.T) {
	f := startFake(t, false)
	f.mu.failNext503 = 3
	c := f.client(t, nil)
	priv := newKey(t)
	start := time.Now()
	_, err := c.Register(context.Background(), priv, api.RegisterRequest{Hostname: "n", Zone: "default"})
	require.NoError(t, err)
	require.Less(t, time.Since(start), 5*time.Second, "backoff is bounded")
	regs := f.registers()
	require.Len(t, regs, 4, "three 503s, then success")
	for i, r := range regs {
		require.NoError(t, r.Verify(f.priv, api.JoinTokenHash(f.joinSecret)), "attempt %d", i)
		require.ErrorIs(t, r.Verify(f.priv, api.JoinTokenHash(f.joinSecret+"x")), api.ErrBadProof, "the proof is bound to the join token")
		if i > 0 {
			require.Greater(t, r.Timestamp, regs[i-1].Timestamp, "each attempt has a new timestamp")
			require.NotEqual(t, r.Proof, regs[i-1].Proof)
		}
	}

	// Exhausted retries surface the last api.Error.
	f.mu.Lock()
	f.mu.failNext503 = 10
	f.mu.Unlock()
	c2 := f.client(t, func(cfg *Config) { cfg.RetryMax = 1 })
	_, err = c2.Register(context.Background(), priv, api.RegisterRequest{Hostname: "n"})
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnavailable, ae.Code)
	require.Len(t, f.registers(), 6)
	require.Empty(t, c2.DeviceToken())

	// A 4xx is not retried.
	c3 := f.client(t, func(cfg *Config) { cfg.Token = newSecret(t) })
	_, err = c3.Register(context.Background(), priv, api.RegisterRequest{Hostname: "n"})
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	require.Equal(t, 401, ae.Status)
	require.Equal(t, 4+2+1, f.hits("POST /v1/devices"), "4xx answered once")
}

func TestRegisterRetriesConnectionErrors(t *testing.T) {
	f := startFake(t, false)
	var dials atomic.Int32
	c := f.client(t, func(cfg *Config) {
		cfg.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if dials.Add(1) <= 2 {
				return nil, errors.New("injected connection refused")
			}
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	})
	_, err := c.Register(context.Background(), newKey(t), api.RegisterRequest{Hostname: "n"})
	require.NoError(t, err)
	require.Len(t, f.registers(), 1)
}

func TestAPIErrorDecoding(t *testing.T) {
	tests := []struct {
		name    string
		status  int
		body    string
		want    api.Error
		wantMsg string // substring of Message
	}{
		{name: "prefix conflict", status: 409,
			body: `{"code":"prefix_conflict","message":"overlaps","prefix":"172.24.0.0/16","owner":"node2"}`,
			want: api.Error{Code: api.CodePrefixConflict, Message: "overlaps", Prefix: "172.24.0.0/16", Owner: "node2", Status: 409}},
		{name: "pool exhausted", status: 507, body: `{"code":"pool_exhausted","message":"full"}`,
			want: api.Error{Code: api.CodePoolExhausted, Message: "full", Status: 507}},
		{name: "html gateway page", status: 502, body: "<html>\n  <b>Bad   gateway</b>\n</html>",
			want: api.Error{Code: api.CodeUnavailable, Status: 502}, wantMsg: "502 Bad Gateway: <html> <b>Bad gateway</b> </html>"},
		{name: "plain 404", status: 404, body: "404 page not found",
			want: api.Error{Code: api.CodeNotFound, Status: 404}, wantMsg: "404 Not Found: 404 page not found"},
		{name: "json without code", status: 500, body: `{"error":"boom"}`,
			want: api.Error{Code: api.CodeInternal, Status: 500}, wantMsg: `{"error":"boom"}`},
		{name: "long body cut", status: 400, body: strings.Repeat("x", 1000),
			want: api.Error{Code: api.CodeBadRequest, Status: 400}, wantMsg: strings.Repeat("x", 200) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, false)
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
				return true
			}
			c := f.client(t, func(cfg *Config) { cfg.RetryMax = -1 })
			c.SetDeviceToken(f.devToken)
			_, err := c.UpdateSelf(context.Background(), api.UpdateSelfRequest{AddChildPrefixes: []string{"172.24.0.0/24"}})
			require.ErrorContains(t, err, "controlclient: update self: ")
			var ae *api.Error
			require.ErrorAs(t, err, &ae)
			if tt.wantMsg != "" {
				require.Contains(t, ae.Message, tt.wantMsg)
				require.LessOrEqual(t, len(ae.Message), 400)
				tt.want.Message = ae.Message
			}
			require.Equal(t, tt.want, *ae)
		})
	}
}

func TestLocalAddrFor(t *testing.T) {
	f := startFake(t, false)
	c := f.client(t, nil)
	a, err := c.LocalAddrFor(context.Background())
	require.NoError(t, err)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), a)
}

func TestCloseEndsCalls(t *testing.T) {
	f := startFake(t, false)
	c := f.client(t, nil)
	_, err := c.Info(context.Background())
	require.NoError(t, err)
	c.Close()
	c.Close() // idempotent
	_, err = c.Info(context.Background())
	require.ErrorIs(t, err, net.ErrClosed)
	_, err = c.Register(context.Background(), newKey(t), api.RegisterRequest{})
	require.ErrorIs(t, err, net.ErrClosed)

	// A call blocked in the service is cancelled by Close.
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return false
	}
	defer close(release)
	c2 := f.client(t, nil)
	errc := make(chan error, 1)
	go func() { _, err := c2.Info(context.Background()); errc <- err }()
	<-entered
	c2.Close()
	select {
	case err := <-errc:
		require.ErrorIs(t, err, net.ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the call")
	}
}

func TestLoggerAdapter(t *testing.T) {
	f := startFake(t, false)
	var buf syncBuffer
	var n atomic.Int32
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if n.Add(1) == 1 {
			writeErr(w, api.CodeUnavailable, "once")
			return true
		}
		return false
	}
	c := f.client(t, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	_, err := c.Info(context.Background())
	require.NoError(t, err)
	require.Contains(t, buf.String(), "controlclient: retrying request")
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
