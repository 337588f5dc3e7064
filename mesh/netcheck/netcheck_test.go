package netcheck_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/netcheck"
	"github.com/wiremesh/wiremesh/meshtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func run(t *testing.T, cfg netcheck.Config) (*netcheck.Report, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return netcheck.Run(ctx, cfg)
}

// TestRunAgainstService: against the in-process service on 127.0.0.1
// (its two STUN ports), without joining: UDP works, both responders see
// the socket's own address (no NAT), the relay refuses the unauthenticated
// upgrade (so it is reachable), and nothing needs a warning.
func TestRunAgainstService(t *testing.T) {
	s := meshtest.NewServer(t)
	r, err := run(t, netcheck.Config{URL: s.URL, Token: s.Token})
	require.NoError(t, err)

	require.Equal(t, s.URL, r.Service)
	require.Equal(t, "meshtest", r.ServiceVersion)
	require.True(t, r.UDP)
	require.Positive(t, r.HTTPSLatency)

	v4 := r.IPv4
	require.True(t, v4.Checked, v4.Err)
	require.Empty(t, v4.Err)
	require.Len(t, v4.Probes, 2, "the primary and the alternate STUN port")
	require.Equal(t, s.Service().STUNAddr(), v4.Probes[0].Server)
	require.NotEqual(t, v4.Probes[0].Server.Port(), v4.Probes[1].Server.Port())
	for _, p := range v4.Probes {
		require.Equal(t, netip.MustParseAddr("127.0.0.1"), p.Mapped.Addr())
		require.Positive(t, p.Latency)
	}
	require.Equal(t, v4.Probes[0].Mapped, v4.Probes[1].Mapped, "one socket, one mapping")
	require.Equal(t, v4.Probes[0].Mapped, v4.Mapped)
	require.Equal(t, netcheck.NATNone, v4.NAT)
	require.Equal(t, netcheck.NATNone, r.NAT)

	require.False(t, r.IPv6.Checked, "the service's STUN address is IPv4")
	require.Equal(t, "the service has no STUN address of this family", r.IPv6.Err)

	require.Equal(t, netcheck.Relay{Offered: true, Reachable: true}, r.Relay)
	require.Empty(t, r.Warnings)
	require.Equal(t, netip.MustParseAddr("127.0.0.1"), r.LocalAddrs[0], "the address towards the service comes first, as a member advertises it")
}

// TestRunWithDeviceToken: a joined member's device token opens the
// relay's WebSocket.
func TestRunWithDeviceToken(t *testing.T) {
	s := meshtest.NewServer(t)
	dir := t.TempDir()
	n := meshtest.Join(t, s, mesh.WithStateDir(dir))
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	require.NoError(t, err)
	var st struct {
		DeviceToken string `json:"device_token"`
	}
	require.NoError(t, json.Unmarshal(b, &st))
	require.NotEmpty(t, st.DeviceToken)

	r, err := run(t, netcheck.Config{URL: s.URL, Token: s.Token, DeviceToken: st.DeviceToken})
	require.NoError(t, err)
	require.Equal(t, netcheck.Relay{Offered: true, Reachable: true, Authenticated: true}, r.Relay)
	require.NoError(t, n.Close())
}

// fakeService serves /v1/info advertising the given STUN addresses, and
// refuses everything else with 404 (so the relay is unreachable).
func fakeService(t *testing.T, stunAddr, altAddr string) string {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/info" {
			http.Error(w, `{"code":"not_found","message":"no"}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.Info{Version: "fake", STUNAddr: stunAddr, STUNAltAddr: altAddr, Relay: true, DefaultZone: "default"})
	}))
	t.Cleanup(ts.Close)
	return ts.URL
}

// silentUDP is a UDP socket on 127.0.0.1 that never answers: UDP to it
// is "blocked".
func silentUDP(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestRunUDPBlocked: no STUN answer is a report, not an error, with the
// warning a person can act on; so is an unreachable relay.
func TestRunUDPBlocked(t *testing.T) {
	a, b := silentUDP(t), silentUDP(t)
	u := fakeService(t, a.String(), ":"+strconv.Itoa(int(b.Port())))
	r, err := run(t, netcheck.Config{URL: u, UDPTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	require.False(t, r.UDP)
	require.True(t, r.IPv4.Checked)
	require.False(t, r.IPv4.Mapped.IsValid())
	require.Equal(t, []netip.AddrPort{a, b}, []netip.AddrPort{r.IPv4.Probes[0].Server, r.IPv4.Probes[1].Server},
		"an empty host is the service URL's")
	require.Equal(t, "no answer in 300ms", r.IPv4.Err)
	require.Equal(t, netcheck.NATUnknown, r.NAT)
	require.False(t, r.Relay.Reachable)
	require.Contains(t, r.Relay.Err, "HTTP 404")
	require.Equal(t, []string{
		"UDP to " + a.String() + " got no answer in 300ms: the relay will be used",
		"the relay cannot be reached (" + r.Relay.Err + "): members without a direct path cannot talk",
	}, r.Warnings)
}

// fakeSTUN answers binding requests with a fixed mapped address, as a
// responder behind a NAT would see the client.
func fakeSTUN(t *testing.T, mapped netip.AddrPort) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() { pc.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil || req.Type != stun.BindingRequest {
				continue
			}
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: mapped.Addr().AsSlice(), Port: int(mapped.Port())}, stun.Fingerprint)
			pc.WriteToUDPAddrPort(resp.Raw, from)
		}
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestRunMapping tells the kinds of NAT apart by what the two responders
// saw.
func TestRunMapping(t *testing.T) {
	pub := netip.MustParseAddrPort("203.0.113.7:40000")
	other := netip.MustParseAddrPort("203.0.113.7:40001")
	for _, tc := range []struct {
		name       string
		alt        netip.AddrPort
		want       api.NATType
		wantWarned bool
	}{
		{"endpoint-independent", pub, netcheck.NATEndpointIndependent, false},
		{"varies", other, netcheck.NATSymmetric, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fakeService(t, fakeSTUN(t, pub).String(), fakeSTUN(t, tc.alt).String())
			r, err := run(t, netcheck.Config{URL: u})
			require.NoError(t, err)
			require.True(t, r.UDP)
			require.Equal(t, pub, r.IPv4.Mapped)
			require.Equal(t, tc.alt, r.IPv4.Probes[1].Mapped)
			require.Equal(t, tc.want, r.IPv4.NAT)
			require.Equal(t, tc.want, r.NAT)
			warned := false
			for _, w := range r.Warnings {
				warned = warned || w == "the NAT maps each destination to another port (symmetric): members behind it reach others directly only when those have a reachable address; otherwise the relay is used"
			}
			require.Equal(t, tc.wantWarned, warned, "%q", r.Warnings)
		})
	}
}

// TestRunFailures: no service, or one whose certificate is not trusted,
// is an error (nothing to report on).
func TestRunFailures(t *testing.T) {
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		u := "http://" + l.Addr().String()
		l.Close()
		_, err = run(t, netcheck.Config{URL: u})
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		require.ErrorContains(t, err, "connection refused")
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		s := meshtest.NewServer(t)
		_, err := run(t, netcheck.Config{URL: s.URL})
		require.True(t, errors.As(err, new(x509.UnknownAuthorityError)) || errors.As(err, new(*tls.CertificateVerificationError)), "%v", err)
	})
	t.Run("bad URL", func(t *testing.T) {
		_, err := run(t, netcheck.Config{URL: "ftp://x"})
		require.ErrorContains(t, err, "scheme must be http or https")
	})
}
