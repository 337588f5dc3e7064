package dashboard

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

//go:embed static
var staticFS embed.FS

// appCSP is the Content-Security-Policy of the dashboard's own page.
const appCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func (d *Dashboard) serveIndex(w http.ResponseWriter, r *http.Request) {
	d.serveFile(w, r, "index.html")
}

func (d *Dashboard) serveStatic(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if name == "index.html" || name == "login.html" {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no such file: "+name)
		return
	}
	d.serveFile(w, r, name)
}

func (d *Dashboard) serveFile(w http.ResponseWriter, r *http.Request, name string) {
	b, err := fs.ReadFile(staticFS, "static/"+name)
	if err != nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no such file: "+name)
		return
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Security-Policy", appCSP)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

// apiRoute is one admin call the dashboard may make.
type apiRoute struct {
	method string
	path   *regexp.Regexp
}

// apiRoutes is the allow-list of forwarded admin calls.
var apiRoutes = []apiRoute{
	{"GET", regexp.MustCompile(`^/v1/(info|zones|devices|prefixes|tokens)$`)},
	{"GET", regexp.MustCompile(`^/v1/devices/dev_[A-Za-z0-9_-]{1,60}$`)}, // one member, with each peer of its report
	{"POST", regexp.MustCompile(`^/v1/tokens$`)},
	{"DELETE", regexp.MustCompile(`^/v1/tokens/[A-Za-z0-9_-]{1,64}$`)},
}

func allowedAPI(method, p string) bool {
	for _, rt := range apiRoutes {
		if rt.method == method && rt.path.MatchString(p) {
			return true
		}
	}
	return false
}

// serveAPI forwards /ui/api/v1/... to the service's API as an admin call.
func (d *Dashboard) serveAPI(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/ui/api")
	if !allowedAPI(r.Method, p) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("the dashboard does not offer %s %s", r.Method, p))
		return
	}
	if r.Method != http.MethodGet && r.Header.Get(CSRFHeader) != "1" {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "missing "+CSRFHeader+" header")
		return
	}
	fw := r.Clone(r.Context())
	fw.URL.Path = p
	fw.URL.RawPath = ""
	fw.RequestURI = fw.URL.RequestURI()
	fw.Header.Del("Cookie")
	fw.Header.Set("Authorization", "Bearer "+d.cfg.AdminToken)
	d.cfg.API.ServeHTTP(w, fw)
}

// serveEvents is the live-update stream (text/event-stream). It starts
// with a "hello" event, then relays the source's events, with a comment
// line as keep-alive. It ends when the session expires, the source drops
// it, or the browser goes away; EventSource reconnects by itself.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	events, err := d.cfg.Subscribe(ctx)
	if err != nil {
		d.log.Warn("dashboard: live updates unavailable", "err", err)
		writeError(w, http.StatusServiceUnavailable, api.CodeUnavailable, "live updates are unavailable")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(s string) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := w.Write([]byte(s)); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 2000\nevent: hello\ndata: {}\n\n") {
		return
	}
	ka := time.NewTicker(d.cfg.KeepAlive)
	defer ka.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			data := bytes.ReplaceAll(bytes.TrimSpace(ev.Data), []byte("\n"), nil)
			if !send("event: " + ev.Type + "\ndata: " + string(data) + "\n\n") {
				return
			}
		case <-ka.C:
			if !d.loggedIn(r) {
				return // the session expired
			}
			if !send(": keep-alive\n\n") {
				return
			}
		}
	}
}
