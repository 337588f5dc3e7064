// Package controlclient is the agent's client for the wiremesh coordination
// service (package control): registration with a proof of key possession,
// the device's own calls, and the watch stream, over HTTPS with the service
// certificate pinned by the join token.
package controlclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultRetryMax              = 4
	DefaultTimeout               = 30 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultUserAgent             = "wiremesh-agent"

	retryWaitMin = 100 * time.Millisecond
	retryWaitMax = 2 * time.Second
	dialTimeout  = 10 * time.Second
)

// ErrNoDeviceToken is returned by calls that need a device token when the
// client has none (call Register or SetDeviceToken first).
var ErrNoDeviceToken = errors.New("no device token (register first)")

// ErrNoJoinToken is returned by Register when the client has no join token.
var ErrNoJoinToken = errors.New("no join token (set Config.Token or put it in the URL fragment)")

// Config configures a Client. The zero value of each field is documented.
type Config struct {
	// URL is the service URL, http:// or https://, optionally with a path
	// prefix. It may carry the join token in its fragment:
	// https://host:8443#TOKEN. Required.
	URL string
	// FallbackURLs are more URLs of the same service: replicas sharing its
	// database (and so its certificate, key, tokens and revisions). When
	// the current one cannot be reached or answers 502/503/504, calls and
	// Watch move on to the next, round robin (see failover.go). Same scheme
	// as URL, no token fragment. Empty: URL only.
	FallbackURLs []string
	// Token is the join token; it overrides the URL fragment. Empty: the
	// fragment's token, or none (then only device-token calls work, after
	// SetDeviceToken). A token may pin the service certificate
	// (see api.ParseJoinToken).
	Token string
	// InsecureHTTP allows an http:// URL to a host that is not loopback.
	// Without it such a URL is refused by New.
	InsecureHTTP bool
	// Fingerprint, when set, is the SHA-256 fingerprint (32 bytes) of the
	// service certificate to pin; it overrides the token's. Empty: the
	// token's fingerprint, if any.
	Fingerprint []byte
	// RootCAs verifies the service certificate when no fingerprint is
	// pinned. Nil: the system roots.
	RootCAs *x509.CertPool
	// Logger receives debug logs of requests and retries. Nil: quiet.
	Logger *slog.Logger
	// RetryMax is how many times an idempotent call (and Register) is
	// retried after a connection error, a 5xx or a 429, with exponential
	// backoff from 100ms to 2s. Zero: DefaultRetryMax; negative: no retries.
	RetryMax int
	// Timeout bounds each attempt of a unary call (not Watch). Zero:
	// DefaultTimeout.
	Timeout time.Duration
	// WatchIdleTimeout makes Watch fail when no line (event or heartbeat)
	// arrives for this long. Zero: no limit beyond TCP keepalives.
	WatchIdleTimeout time.Duration
	// UserAgent is sent with every request. Empty: DefaultUserAgent.
	UserAgent string

	// dial replaces the TCP dialer (tests only).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// maxLine replaces MaxWatchLine when > 0 (tests only).
	maxLine int
}

// Client talks to one coordination service. It is safe for concurrent use.
// Each Client owns its HTTP transport; Close releases it.
type Client struct {
	base        string // URL's scheme://host[:port][/path], no trailing slash
	replicas    replicas
	joinSecret  string // "" when no join token
	fingerprint []byte // pinned cert fingerprint; nil: normal verification
	retryMax    int
	userAgent   string
	idleTimeout time.Duration
	maxLine     int // longest watch line
	log         *slog.Logger

	transport *http.Transport
	rc        *retryablehttp.Client // unary calls, retried
	once      *retryablehttp.Client // unary calls, single attempt (Register's own loop)
	stream    *http.Client          // watch: no total timeout

	closeCtx    context.Context // done when Close was called
	closeCancel context.CancelCauseFunc

	mu struct {
		sync.Mutex
		deviceToken string
		info        *api.Info // cached by Info; used by Register
		lastTS      int64     // last registration timestamp, kept strictly increasing
	}
}

// New validates cfg and returns a Client. It does no network I/O.
func New(cfg Config) (*Client, error) {
	base, fragment, u, err := parseServiceURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("controlclient: %w", err)
	}
	fallbacks, err := parseFallbackURLs(cfg.FallbackURLs, u, cfg.InsecureHTTP)
	if err != nil {
		return nil, fmt.Errorf("controlclient: %w", err)
	}
	c := &Client{
		base:        base,
		replicas:    replicas{bases: append([]string{base}, fallbacks...)},
		retryMax:    cfg.RetryMax,
		userAgent:   cfg.UserAgent,
		idleTimeout: cfg.WatchIdleTimeout,
		maxLine:     MaxWatchLine,
		log:         cfg.Logger,
	}
	if cfg.maxLine > 0 {
		c.maxLine = cfg.maxLine
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.retryMax == 0:
		c.retryMax = DefaultRetryMax
	case c.retryMax < 0:
		c.retryMax = 0
	}
	if c.userAgent == "" {
		c.userAgent = DefaultUserAgent
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	tok := strings.TrimSpace(cfg.Token)
	if tok == "" {
		tok = strings.TrimSpace(fragment)
	}
	if tok != "" {
		secret, fp, err := api.ParseJoinToken(tok)
		if err != nil {
			return nil, fmt.Errorf("controlclient: %w", err)
		}
		c.joinSecret, c.fingerprint = secret, fp
	}
	if len(cfg.Fingerprint) > 0 {
		if err := tlspin.Check(cfg.Fingerprint); err != nil {
			return nil, fmt.Errorf("controlclient: %w", err)
		}
		c.fingerprint = append([]byte(nil), cfg.Fingerprint...)
	}

	if u.Scheme == "http" {
		if !cfg.InsecureHTTP && !isLoopbackHost(u.Hostname()) {
			return nil, fmt.Errorf("controlclient: service URL %q: plain http:// to non-loopback host %q is refused; use https:// or allow it explicitly (InsecureHTTP, --insecure-http)", redactURL(cfg.URL), u.Hostname())
		}
		if c.fingerprint != nil {
			c.log.Warn("controlclient: certificate fingerprint ignored for plain http:// service URL", "url", base)
			c.fingerprint = nil
		}
	}

	c.transport = newTransport(cfg, c.fingerprint)
	c.rc = newRetryClient(c.transport, timeout, c.retryMax, cfg.Logger)
	c.rc.CheckRetry = func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		c.failed(attemptOf(ctx), resp, err)
		return checkRetry(ctx, resp, err)
	}
	c.rc.PrepareRetry = c.prepareRetry
	c.once = newRetryClient(c.transport, timeout, 0, cfg.Logger)
	c.stream = &http.Client{Transport: c.transport, CheckRedirect: noRedirect}
	c.closeCtx, c.closeCancel = context.WithCancelCause(context.Background())
	return c, nil
}

// Close cancels running calls and watches (they return an error wrapping
// net.ErrClosed) and closes idle connections. Later calls fail with
// net.ErrClosed. Close is idempotent.
func (c *Client) Close() {
	c.closeCancel(net.ErrClosed)
	c.transport.CloseIdleConnections()
}

// SetDeviceToken sets the device token used by Self, UpdateSelf,
// ReleasePrefix and Watch (e.g. restored from the state directory).
func (c *Client) SetDeviceToken(tok string) {
	c.mu.Lock()
	c.mu.deviceToken = strings.TrimSpace(tok)
	c.mu.Unlock()
}

// DeviceToken returns the current device token ("" if none).
func (c *Client) DeviceToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.deviceToken
}

// parseServiceURL checks a service URL and splits off its fragment (the
// join token). Errors quote the URL with the token redacted.
func parseServiceURL(raw string) (base, fragment string, u *url.URL, err error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return "", "", nil, errors.New("service URL is empty")
	}
	u, err = url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error quotes the raw URL, token included
		}
		return "", "", nil, fmt.Errorf("service URL %q: %v", redactURL(raw), err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", nil, fmt.Errorf("service URL %q: scheme must be http or https", redactURL(raw))
	}
	if u.Hostname() == "" {
		return "", "", nil, fmt.Errorf("service URL %q: no host", redactURL(raw))
	}
	if u.User != nil {
		return "", "", nil, fmt.Errorf("service URL %q: user info is not supported", redactURL(raw))
	}
	if u.RawQuery != "" || u.ForceQuery {
		return "", "", nil, fmt.Errorf("service URL %q: query is not supported", redactURL(raw))
	}
	fragment = u.Fragment
	u.Fragment, u.RawFragment = "", ""
	return strings.TrimRight(u.String(), "/"), fragment, u, nil
}

// redactURL hides everything of a URL fragment (the join token) but its
// first characters.
func redactURL(raw string) string {
	b, frag, ok := strings.Cut(raw, "#")
	if !ok {
		return raw
	}
	return b + "#" + redactToken(frag)
}

func redactToken(tok string) string {
	if len(tok) <= 8 {
		return tok
	}
	return tok[:8] + "…"
}

// isLoopbackHost reports whether host is "localhost" or a loopback IP.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func newTransport(cfg Config, fingerprint []byte) *http.Transport {
	dialer := &net.Dialer{
		Timeout: dialTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     15 * time.Second,
			Interval: 15 * time.Second,
			Count:    4,
		},
	}
	dial := dialer.DialContext
	if cfg.dial != nil {
		dial = cfg.dial
	}
	tlsConf := tlspin.ClientConfig(fingerprint, cfg.RootCAs)
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dial,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   dialTimeout,
		ResponseHeaderTimeout: DefaultResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   4,
		ForceAttemptHTTP2:     false, // HTTP/1.1: one TCP connection (and keepalive) per watch
	}
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func newRetryClient(t *http.Transport, timeout time.Duration, retryMax int, log *slog.Logger) *retryablehttp.Client {
	rc := &retryablehttp.Client{
		HTTPClient:   &http.Client{Transport: t, Timeout: timeout, CheckRedirect: noRedirect},
		RetryWaitMin: retryWaitMin,
		RetryWaitMax: retryWaitMax,
		RetryMax:     retryMax,
		CheckRetry:   checkRetry,
		Backoff:      backoff,
		// Hand the last response back (its api.Error is decoded by the
		// caller) instead of a generic "giving up" error.
		ErrorHandler: func(resp *http.Response, err error, _ int) (*http.Response, error) {
			if resp == nil {
				return nil, err
			}
			if ctxErr := resp.Request.Context().Err(); ctxErr != nil {
				drainClose(resp)
				return nil, context.Cause(resp.Request.Context())
			}
			return resp, nil
		},
	}
	if log != nil {
		rc.Logger = slogAdapter{log}
	}
	return rc
}

// checkRetry retries connection errors, 429 and 5xx (except 501); never a
// 4xx, a certificate problem or a cancelled context.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, context.Cause(ctx)
	}
	if err != nil {
		var fm *tlspin.MismatchError
		if errors.As(err, &fm) || errors.Is(err, tlspin.ErrNoCertificate) || isCertError(err) {
			return false, nil
		}
		return retryablehttp.DefaultRetryPolicy(ctx, resp, err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		return true, nil
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, nil
	}
	return false, nil
}

func isCertError(err error) bool {
	var (
		cv *tls.CertificateVerificationError
		ua x509.UnknownAuthorityError
		ci x509.CertificateInvalidError
		hn x509.HostnameError
	)
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &hn)
}

// backoff is retryablehttp's exponential backoff, with a Retry-After from
// the server honoured but capped at max.
func backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	return min(max(retryablehttp.DefaultBackoff(lo, hi, attempt, resp), lo), hi)
}

// slogAdapter makes an slog.Logger a retryablehttp.LeveledLogger. Its
// per-attempt "request failed" errors are logged at Debug: the caller gets
// the final error and decides what it is worth, so an unreachable service
// is one message, not one warning per retry.
type slogAdapter struct{ l *slog.Logger }

var _ retryablehttp.LeveledLogger = slogAdapter{}

func (a slogAdapter) Error(msg string, kv ...any) { a.l.Debug("controlclient: "+msg, kv...) }
func (a slogAdapter) Warn(msg string, kv ...any)  { a.l.Debug("controlclient: "+msg, kv...) }
func (a slogAdapter) Info(msg string, kv ...any)  { a.l.Info("controlclient: "+msg, kv...) }
func (a slogAdapter) Debug(msg string, kv ...any) { a.l.Debug("controlclient: "+msg, kv...) }
