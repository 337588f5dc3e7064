package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// HTTP is an HTTP proxy server: CONNECT tunnels (what clients use for
// https:// URLs and any other TCP protocol) and plain http:// requests in
// absolute form (GET http://host/path), both through Config.Dial. A
// destination the mesh does not route is answered 502 Bad Gateway, a name
// that is no member's 502 too, a dial that times out 504 Gateway Timeout,
// each with the reason as a plain-text body.
type HTTP struct {
	c   *conns
	srv *http.Server
	tr  *http.Transport
	rp  *httputil.ReverseProxy
}

// NewHTTP returns an HTTP proxy server with cfg. Serve it on a listener.
func NewHTTP(cfg Config) (*HTTP, error) {
	c, err := newConns(cfg)
	if err != nil {
		return nil, err
	}
	h := &HTTP{c: c}
	h.tr = &http.Transport{
		Proxy: nil, // never another proxy
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.cfg.Dial(ctx, network, addr)
		},
		MaxIdleConns:          32,
		IdleConnTimeout:       60 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) {}, // the URL is absolute already; no X-Forwarded-*
		Transport:    h.tr,
		ErrorHandler: h.proxyError,
		ErrorLog:     nil,
	}
	h.srv = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: handshakeTimeout,
		ErrorLog:          nil,
	}
	return h, nil
}

// Serve accepts connections on ln and serves them until ln fails or the
// server is closed; it then returns net.ErrClosed (after Close) or the
// listener's error.
func (h *HTTP) Serve(ln net.Listener) error {
	if !h.c.addListener(ln) {
		ln.Close()
		return net.ErrClosed
	}
	defer h.c.wg.Done()
	err := h.srv.Serve(ln)
	h.c.mu.Lock()
	closed := h.c.closed
	delete(h.c.lns, ln)
	h.c.mu.Unlock()
	if closed || errors.Is(err, http.ErrServerClosed) {
		return net.ErrClosed
	}
	return fmt.Errorf("proxy: %w", err)
}

// Close closes the listeners, every client connection and every tunnel,
// and returns once the goroutines serving them are done. A second Close
// returns net.ErrClosed.
func (h *HTTP) Close() error {
	h.srv.Close() // listeners and non-hijacked connections
	if !h.c.close() {
		return fmt.Errorf("proxy: close: %w", net.ErrClosed)
	}
	h.tr.CloseIdleConnections()
	return nil
}

// ServeHTTP serves one proxy request.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.c.enter() {
		http.Error(w, "wiremesh proxy: shutting down", http.StatusServiceUnavailable)
		return
	}
	defer h.c.wg.Done()
	switch {
	case r.Method == http.MethodConnect:
		h.connect(w, r)
	case r.URL.IsAbs() && r.URL.Scheme == "http" && r.URL.Host != "":
		h.rp.ServeHTTP(w, r)
	default:
		http.Error(w, "wiremesh proxy: this is an HTTP proxy: send CONNECT host:port, or a request for an absolute http:// URL (https:// URLs go through CONNECT)", http.StatusBadRequest)
	}
}

// connect dials r.Host and, once connected, answers 200 and splices the
// client's connection to it.
func (h *HTTP) connect(w http.ResponseWriter, r *http.Request) {
	target := r.Host
	if _, _, err := net.SplitHostPort(target); err != nil {
		http.Error(w, fmt.Sprintf("wiremesh proxy: CONNECT %q: want host:port", target), http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "wiremesh proxy: CONNECT needs HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	up, err := h.c.dial(r.Context(), target)
	if err != nil {
		h.proxyError(w, r, err)
		return
	}
	defer h.c.untrack(up)
	c, brw, err := hj.Hijack()
	if err != nil {
		up.Close()
		return
	}
	if !h.c.track(c) {
		c.Close()
		up.Close()
		return
	}
	defer h.c.untrack(c)
	c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		c.Close()
		up.Close()
		return
	}
	if err := flushBuffered(brw.Reader, up); err != nil {
		c.Close()
		up.Close()
		return
	}
	splice(c, up)
}

// flushBuffered writes what the client sent after its CONNECT request
// (already read into r) to up.
func flushBuffered(r *bufio.Reader, up net.Conn) error {
	n := r.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := r.Peek(n)
	_, err := up.Write(b)
	return err
}

// proxyError answers a failed dial or upstream request.
func (h *HTTP) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	h.c.log.Debug("proxy: http: request failed", "method", r.Method, "target", r.Host, "err", err)
	code := http.StatusBadGateway
	if classify(err) == failTimeout {
		code = http.StatusGatewayTimeout
	}
	http.Error(w, fmt.Sprintf("wiremesh proxy: %s %s: %v", r.Method, r.Host, err), code)
}
