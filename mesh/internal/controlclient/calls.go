package controlclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/wiremesh/wiremesh/control/api"
)

const (
	maxResponseBytes = 4 << 20  // unary response bodies
	maxErrorBytes    = 64 << 10 // error bodies read for decoding
	snippetRunes     = 200      // body text quoted in a generic error
)

// Info fetches GET /v1/info (no credentials) and caches it for Register.
func (c *Client) Info(ctx context.Context) (api.Info, error) {
	var info api.Info
	if err := c.call(ctx, "info", http.MethodGet, "/v1/info", "", nil, &info); err != nil {
		return api.Info{}, err
	}
	c.mu.Lock()
	c.mu.info = &info
	c.mu.Unlock()
	return info, nil
}

// Register registers the device key with the join token: it sets
// req.PublicKey (when zero) and req.Timestamp, signs req with private and
// the service key (fetching Info when not cached yet), and POSTs
// /v1/devices. The returned device token is kept for later calls.
//
// Connection errors, 429 and 5xx are retried up to Config.RetryMax times,
// each attempt with a new timestamp and proof: timestamps are strictly
// increasing per Client, so the service never sees a replay.
func (c *Client) Register(ctx context.Context, private api.Key, req api.RegisterRequest) (api.RegisterResponse, error) {
	fail := func(err error) (api.RegisterResponse, error) {
		return api.RegisterResponse{}, fmt.Errorf("controlclient: register: %w", err)
	}
	if c.joinSecret == "" {
		return fail(ErrNoJoinToken)
	}
	if private.IsZero() {
		return fail(errors.New("device private key is zero"))
	}
	pub := api.PublicKey(private)
	switch {
	case req.PublicKey.IsZero():
		req.PublicKey = pub
	case req.PublicKey != pub:
		return fail(fmt.Errorf("public key %q does not belong to the private key (want %q)", req.PublicKey, pub))
	}

	ctx, cancel, err := c.opCtx(ctx)
	if err != nil {
		return fail(err)
	}
	defer cancel(nil)

	c.mu.Lock()
	info := c.mu.info
	c.mu.Unlock()
	if info == nil {
		i, err := c.Info(ctx)
		if err != nil {
			return api.RegisterResponse{}, err // already "controlclient: info: ..."
		}
		info = &i
	}
	if info.PublicKey.IsZero() {
		return fail(errors.New("service info carries no public key"))
	}

	resp, err := c.postRegistration(ctx, private, info.PublicKey, req)
	if err != nil {
		return fail(err)
	}
	defer drainClose(resp)
	var out api.RegisterResponse
	if err := decodeResponse(resp, &out); err != nil {
		return fail(err)
	}
	if out.DeviceToken == "" {
		return fail(errors.New("service response carries no device token"))
	}
	c.SetDeviceToken(out.DeviceToken)
	return out, nil
}

// postRegistration POSTs the registration req, signed with private for the
// service key pub, retrying as Register says (each attempt with a new
// timestamp and proof, on the current replica), and returns the last
// response.
func (c *Client) postRegistration(ctx context.Context, private, pub api.Key, req api.RegisterRequest) (*http.Response, error) {
	tokHash := api.JoinTokenHash(c.joinSecret)
	for attempt := 0; ; attempt++ {
		// Every attempt is signed anew (timestamp, nonce): the service
		// spends a proof whatever the outcome, so a retried body would be
		// refused as a replay.
		r := req // Sign only sets r.Proof; the slices are shared read-only
		r.Timestamp = c.nextTimestamp()
		r.Nonce = newNonce()
		if err := r.Sign(private, pub, tokHash); err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		body, err := json.Marshal(&r)
		if err != nil {
			return nil, err
		}
		hreq, err := c.newRequest(ctx, http.MethodPost, "/v1/devices", c.joinSecret, body)
		if err != nil {
			return nil, err
		}
		resp, err := c.once.Do(hreq)
		if err == nil && ctx.Err() != nil {
			drainClose(resp)
			err = context.Cause(ctx)
		}
		if err != nil {
			err = c.causeOr(ctx, err)
		}
		c.failed(attemptOf(hreq.Context()), resp, err) // the next attempt goes to another replica
		retry, _ := checkRetry(ctx, resp, err)
		if !retry || attempt >= c.retryMax {
			if err != nil {
				return nil, err
			}
			return resp, nil
		}
		wait := backoff(retryWaitMin, retryWaitMax, attempt, resp)
		if resp != nil {
			drainClose(resp)
			c.log.Debug("controlclient: register: retrying", "status", resp.StatusCode, "wait", wait, "remaining", c.retryMax-attempt)
		} else {
			c.log.Debug("controlclient: register: retrying", "err", err, "wait", wait, "remaining", c.retryMax-attempt)
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return nil, err
		}
	}
}

// Self fetches GET /v1/devices/self (device token).
func (c *Client) Self(ctx context.Context) (api.Device, error) {
	var d api.Device
	err := c.deviceCall(ctx, "self", http.MethodGet, "/v1/devices/self", nil, &d)
	return d, err
}

// UpdateSelf sends PATCH /v1/devices/self (device token) and returns the
// updated device. It is retried like the idempotent calls: it replaces
// endpoints and adds prefixes, so repeating it changes nothing more.
func (c *Client) UpdateSelf(ctx context.Context, r api.UpdateSelfRequest) (api.Device, error) {
	var d api.Device
	err := c.deviceCall(ctx, "update self", http.MethodPatch, "/v1/devices/self", &r, &d)
	return d, err
}

// ReleasePrefix sends DELETE /v1/devices/self/prefixes/{prefix} (device
// token; the prefix is path-escaped, "/" as %2F). A prefix that is invalid
// or not canonical fails locally with an *api.Error of code invalid_prefix
// and Status 0. If a retried release already took effect, the retry answers
// not_found.
func (c *Client) ReleasePrefix(ctx context.Context, p netip.Prefix) error {
	if !p.IsValid() || p != p.Masked() {
		msg := fmt.Sprintf("prefix %q is not valid", p)
		if p.IsValid() {
			msg = fmt.Sprintf("prefix %q is not canonical (want %q)", p, p.Masked())
		}
		return fmt.Errorf("controlclient: release prefix: %w", &api.Error{Code: api.CodeInvalidPrefix, Message: msg})
	}
	return c.deviceCall(ctx, "release prefix", http.MethodDelete,
		"/v1/devices/self/prefixes/"+url.PathEscape(p.String()), nil, nil)
}

// LocalAddrFor returns the local IP address this host uses to reach the
// service (its current replica): the source address the kernel picks for a UDP "connect" to the
// service host (no packet is sent). Host names are resolved.
func (c *Client) LocalAddrFor(ctx context.Context) (netip.Addr, error) {
	fail := func(err error) (netip.Addr, error) {
		return netip.Addr{}, fmt.Errorf("controlclient: local address: %w", err)
	}
	_, base := c.replicas.current()
	u, err := url.Parse(base)
	if err != nil {
		return fail(err)
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	ua, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return fail(fmt.Errorf("unexpected local address %q", conn.LocalAddr()))
	}
	a := ua.AddrPort().Addr().Unmap()
	if !a.IsValid() || a.IsUnspecified() {
		return fail(fmt.Errorf("no route to %q", u.Host))
	}
	return a, nil
}

// deviceCall is call with the device token.
func (c *Client) deviceCall(ctx context.Context, op, method, path string, in, out any) error {
	tok := c.DeviceToken()
	if tok == "" {
		return fmt.Errorf("controlclient: %s: %w", op, ErrNoDeviceToken)
	}
	return c.call(ctx, op, method, path, tok, in, out)
}

// call does one retried JSON request. auth is the bearer token ("" none);
// in, when non-nil, is sent as JSON; out, when non-nil, receives a 2xx body.
// Errors are wrapped as "controlclient: OP: ...", non-2xx as *api.Error.
func (c *Client) call(ctx context.Context, op, method, path, auth string, in, out any) error {
	ctx, cancel, err := c.opCtx(ctx)
	if err != nil {
		return fmt.Errorf("controlclient: %s: %w", op, err)
	}
	defer cancel(nil)
	var body []byte
	if in != nil {
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("controlclient: %s: %w", op, err)
		}
	}
	req, err := c.newRequest(ctx, method, path, auth, body)
	if err != nil {
		return fmt.Errorf("controlclient: %s: %w", op, err)
	}
	resp, err := c.rc.Do(req)
	if err != nil {
		return fmt.Errorf("controlclient: %s: %w", op, c.causeOr(ctx, err))
	}
	defer drainClose(resp)
	if err := decodeResponse(resp, out); err != nil {
		return fmt.Errorf("controlclient: %s: %w", op, err)
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, method, path, auth string, body []byte) (*retryablehttp.Request, error) {
	var raw any // a nil []byte would make a chunked empty body
	if body != nil {
		raw = body
	}
	idx, base := c.replicas.current()
	ctx = withAttempt(ctx, &attempt{idx: idx, base: base})
	req, err := retryablehttp.NewRequestWithContext(ctx, method, base+path, raw)
	if err != nil {
		return nil, err
	}
	c.setHeaders(req.Header, auth)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

func (c *Client) setHeaders(h http.Header, auth string) {
	h.Set("User-Agent", c.userAgent)
	h.Set("Accept", "application/json")
	if auth != "" {
		h.Set("Authorization", "Bearer "+auth)
	}
}

// opCtx derives the context of one call: cancelled with ctx, and with cause
// net.ErrClosed when the Client is closed. The caller must call cancel
// (nil cause: context.Canceled).
func (c *Client) opCtx(ctx context.Context) (_ context.Context, cancel context.CancelCauseFunc, _ error) {
	if c.closeCtx.Err() != nil {
		return nil, nil, net.ErrClosed
	}
	ctx, cancelCtx := context.WithCancelCause(ctx)
	stop := context.AfterFunc(c.closeCtx, func() { cancelCtx(net.ErrClosed) })
	return ctx, func(cause error) { stop(); cancelCtx(cause) }, nil
}

// causeOr returns why ctx ended (context.Canceled, DeadlineExceeded,
// net.ErrClosed) if it did, else err.
func (c *Client) causeOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// nextTimestamp returns the current Unix time, or one more than the last
// timestamp handed out if that is not earlier, so each proof is new.
func (c *Client) nextTimestamp() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	ts := max(time.Now().Unix(), c.mu.lastTS+1)
	c.mu.lastTS = ts
	return ts
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// decodeResponse decodes a 2xx body into out (if non-nil) or turns a
// non-2xx response into an *api.Error.
func decodeResponse(resp *http.Response, out any) error {
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return readAPIError(resp)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(out); err != nil {
		return fmt.Errorf("decode %s response: %w", resp.Status, err)
	}
	return nil
}

// readAPIError decodes the {code, message} body of a non-2xx response; a
// body that is not such JSON (a proxy's page) becomes a generic error with
// a code derived from the status and a snippet of the body.
func readAPIError(resp *http.Response) *api.Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	var e api.Error
	if json.Unmarshal(b, &e) == nil && e.Code != "" {
		e.Status = resp.StatusCode
		return &e
	}
	msg := resp.Status
	if s := snippet(b); s != "" {
		msg += ": " + s
	}
	return &api.Error{Code: codeForStatus(resp.StatusCode), Message: msg, Status: resp.StatusCode}
}

// codeForStatus maps an HTTP status to the error code the service would
// have sent with it.
func codeForStatus(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return api.CodeUnauthorized
	case http.StatusForbidden:
		return api.CodeForbidden
	case http.StatusNotFound:
		return api.CodeNotFound
	case http.StatusConflict:
		return api.CodeConflict
	case http.StatusRequestEntityTooLarge:
		return api.CodeTooLarge
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return api.CodeUnavailable
	}
	if status >= 400 && status < 500 {
		return api.CodeBadRequest
	}
	return api.CodeInternal
}

// snippet is the start of a body as one line of valid text.
func snippet(b []byte) string {
	s := strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "\uFFFD")), " ")
	if utf8.RuneCountInString(s) <= snippetRunes {
		return s
	}
	r := []rune(s)
	return string(r[:snippetRunes]) + "…"
}

// drainClose reads a little of a body, so the connection can be reused,
// and closes it.
func drainClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBytes))
	resp.Body.Close()
}

// newNonce returns 16 random bytes in hex for RegisterRequest.Nonce.
func newNonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ReportStats sends POST /v1/devices/self/stats (device token): the
// member's latest per-peer summary, replacing the previous one.
func (c *Client) ReportStats(ctx context.Context, r api.StatsReport) error {
	return c.deviceCall(ctx, "stats", http.MethodPost, api.StatsPath, &r, nil)
}
