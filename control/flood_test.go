package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address src (Linux routes all of 127.0.0.0/8 to lo).
func clientFrom(t *testing.T, src string) *http.Client {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(src, "0")) // can this host use src?
	if err != nil {
		t.Skipf("cannot use %s on this system: %v", src, err)
	}
	ln.Close()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func postRegister(hc *http.Client, url, tok string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(context.Background(), "POST", url+"/v1/devices", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Issue 12: a flood of bad registrations from one client does not slow or
// refuse another client's registrations, and the flood itself gets only a
// bounded number of requests past the limiter. Default limits, real
// connections from two loopback addresses.
func TestRegistrationFloodSparesOtherClients(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	attacker := clientFrom(t, "127.0.0.2")
	victim := clientFrom(t, "127.0.0.1")

	// Bad registrations of three kinds, encoded once (the flood costs the
	// test little CPU): unknown token with a good proof for it (replayed
	// after the first), good token with a bad proof, good token with
	// garbage.
	unknown := "wmj_00000000000000000000000000000000"
	mustJSON := func(v any) []byte { b, err := json.Marshal(v); require.NoError(t, err); return b }
	badProof := e.request(tok, newDevice(), "evil")
	badProof.Proof[0] ^= 1
	bodies := []struct {
		tok  string
		body []byte
	}{
		{unknown, mustJSON(e.request(unknown, newDevice(), "evil"))},
		{tok, mustJSON(badProof)},
		{tok, []byte(`{"public_key":`)},
	}

	registerAll := func(n int) time.Duration {
		start := time.Now()
		for i := range n {
			b, err := json.Marshal(e.request(tok, newDevice(), "good"))
			require.NoError(t, err)
			code, err := postRegister(victim, e.ts.URL, tok, b)
			require.NoError(t, err)
			require.Equal(t, http.StatusCreated, code, "victim registration %d", i)
		}
		return time.Since(start)
	}
	const n = 20
	baseline := registerAll(n)

	var (
		stop           = make(chan struct{})
		wg             sync.WaitGroup
		sent, limited  atomic.Int64
		floodStart     = time.Now()
		unexpectedCode atomic.Int64
	)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := bodies[(g+i)%len(bodies)]
				code, err := postRegister(attacker, e.ts.URL, k.tok, k.body)
				if err != nil {
					continue
				}
				sent.Add(1)
				switch code {
				case http.StatusTooManyRequests:
					limited.Add(1)
				case http.StatusUnauthorized, http.StatusBadRequest:
				default:
					unexpectedCode.Store(int64(code))
				}
			}
		}()
	}
	// Let the flood exhaust its budgets before measuring.
	require.Eventually(t, func() bool { return limited.Load() > 100 }, 30*time.Second, 10*time.Millisecond)
	during := registerAll(n)
	close(stop)
	wg.Wait()
	elapsed := time.Since(floodStart)

	require.Zero(t, unexpectedCode.Load(), "the flood only ever gets 400, 401 or 429")
	passed := sent.Load() - limited.Load()
	bound := int64(defaultRegisterBurst) + int64(elapsed.Seconds()*defaultRegisterPerSecond) + 1
	require.LessOrEqual(t, passed, bound, "flood requests past the limiter (of %d sent in %s)", sent.Load(), elapsed)
	t.Logf("flood: %d requests in %s, %d refused with 429, %d reached the handlers (bound %d)",
		sent.Load(), elapsed.Round(time.Millisecond), limited.Load(), passed, bound)
	t.Logf("victim: %d registrations took %s before the flood, %s during it (ratio %.2f)",
		n, baseline.Round(time.Millisecond), during.Round(time.Millisecond), float64(during)/float64(baseline))
}
