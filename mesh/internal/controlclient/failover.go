package controlclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// Failover between the replicas of one service (Config.FallbackURLs).
//
// The client talks to one replica at a time, the current one. A call that
// cannot reach it (connection refused, reset, timed out) or that it
// answers 502, 503 or 504 moves the client on to the next replica, round
// robin, and the call's next attempt goes there; Watch moves on when its
// stream breaks or ends, so that the caller's next Watch, from its last
// revision, resumes on another replica. Replicas share the database, so
// revisions, tokens, the service key and the certificate are the same on
// all of them.

// replicas is the list of service base URLs and the current one.
type replicas struct {
	bases []string     // base URLs: Config.URL first, then FallbackURLs
	cur   atomic.Int64 // index into bases of the current replica
}

// current returns the index and base URL of the current replica.
func (r *replicas) current() (int, string) {
	i := int(r.cur.Load()) % len(r.bases)
	return i, r.bases[i]
}

// moveOn makes the replica after from the current one, unless another
// call moved on from from already.
func (r *replicas) moveOn(from int) (to int, moved bool) {
	if len(r.bases) < 2 {
		return from, false
	}
	to = (from + 1) % len(r.bases)
	return to, r.cur.CompareAndSwap(int64(from), int64(to))
}

// attempt records which replica a request is being sent to; it rides in
// the request's context so that CheckRetry and PrepareRetry see it.
type attempt struct {
	idx  int
	base string
}

type attemptKey struct{}

func withAttempt(ctx context.Context, a *attempt) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

func attemptOf(ctx context.Context) *attempt {
	a, _ := ctx.Value(attemptKey{}).(*attempt)
	return a
}

// parseFallbackURLs checks the fallback URLs against the primary URL u:
// same scheme, no token fragment, plain http only on loopback unless
// insecure.
func parseFallbackURLs(raws []string, u *url.URL, insecure bool) ([]string, error) {
	var bases []string
	for _, raw := range raws {
		base, frag, fu, err := parseServiceURL(raw)
		if err != nil {
			return nil, fmt.Errorf("fallback %w", err)
		}
		switch {
		case frag != "":
			return nil, fmt.Errorf("fallback service URL %q: carries a token; give the join token once (Config.Token or the first URL)", redactURL(raw))
		case fu.Scheme != u.Scheme:
			return nil, fmt.Errorf("fallback service URL %q: scheme %s differs from the service URL's %s: replicas of one service are reached alike", raw, fu.Scheme, u.Scheme)
		case fu.Scheme == "http" && !insecure && !isLoopbackHost(fu.Hostname()):
			return nil, fmt.Errorf("fallback service URL %q: plain http:// to non-loopback host %q is refused; use https:// or allow it explicitly (InsecureHTTP, --insecure-http)", raw, fu.Hostname())
		}
		bases = append(bases, base)
	}
	return bases, nil
}

// failed moves on from a's replica when resp/err say it is unreachable or
// unavailable. It reports whether the client moved.
func (c *Client) failed(a *attempt, resp *http.Response, err error) bool {
	if a == nil || !replicaDown(resp, err) {
		return false
	}
	to, moved := c.replicas.moveOn(a.idx)
	if moved {
		c.log.Warn("controlclient: service replica unavailable; moving to the next",
			"from", a.base, "to", c.replicas.bases[to], "err", errOrStatus(resp, err))
	}
	return moved
}

// replicaDown reports an outcome that another replica may not share: a
// transport error (not a certificate problem) or a 502, 503 or 504.
func replicaDown(resp *http.Response, err error) bool {
	if err != nil {
		var fm *tlspin.MismatchError
		return !errors.As(err, &fm) && !errors.Is(err, tlspin.ErrNoCertificate) && !isCertError(err) &&
			!errors.Is(err, net.ErrClosed) &&
			!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	if resp == nil {
		return false
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func errOrStatus(resp *http.Response, err error) any {
	if err != nil {
		return err
	}
	return resp.Status
}

// prepareRetry points a retried request at the current replica, which
// failed may just have changed.
func (c *Client) prepareRetry(req *http.Request) error {
	a := attemptOf(req.Context())
	if a == nil {
		return nil
	}
	idx, base := c.replicas.current()
	if idx == a.idx {
		return nil
	}
	u, err := url.Parse(base + strings.TrimPrefix(req.URL.String(), a.base))
	if err != nil {
		return err
	}
	req.URL, req.Host = u, ""
	a.idx, a.base = idx, base
	return nil
}
