// Package dashboard serves the wiremesh service's web dashboard at /ui/ on
// the service's own listener: zones, members (online state, addresses,
// child prefixes, last seen), prefixes with their owners, join tokens
// (create, revoke), a picture of the mesh, and live updates over
// Server-Sent Events. It is plain HTML, CSS and JavaScript embedded in the
// binary.
//
// # Security
//
// The admin token logs in (POST /ui/login, compared in constant time). The
// answer is a session cookie (HttpOnly, Secure, SameSite=Strict, Path=/ui/)
// holding a signed expiry, never the token (see sessions). Without a valid
// session only the login page is served. Every state-changing request
// passes [http.CrossOriginProtection] (Sec-Fetch-Site / Origin against
// Host); the dashboard's own API calls must also carry the
// X-Wiremesh-Dashboard header, which no cross-origin page can send without
// a CORS preflight that this server never grants. Pages carry a strict
// Content-Security-Policy (no inline script) and may not be framed.
//
// The dashboard holds no data of its own: its API (/ui/api/v1/...) forwards
// an allow-list of admin calls to the service's API with the admin
// credential, so the admin API's validation, errors and metrics apply.
package dashboard

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// Path is where the dashboard is mounted.
const Path = "/ui/"

// CookieName is the name of the session cookie.
const CookieName = "wiremesh_session"

// CSRFHeader must be sent (value "1") with the dashboard's state-changing
// API calls.
const CSRFHeader = "X-Wiremesh-Dashboard"

// Event is one live update for the dashboard's event stream.
type Event struct {
	// Type is the SSE event name: "change" (the zone's change log moved),
	// "presence" (a member went online or offline) or "stats" (a member
	// reported its peers' paths, handshakes and bytes).
	Type string
	// Data is the event's JSON, on one line.
	Data json.RawMessage
}

// SubscribeFunc starts a stream of live updates that lasts until ctx ends.
// The channel is closed when the stream ends (ctx done, or the source
// dropped a reader that fell behind); the browser then reconnects and
// reloads everything.
type SubscribeFunc func(ctx context.Context) (<-chan Event, error)

// Config configures a Dashboard.
type Config struct {
	// AdminToken is the credential that logs in; it also keys the session
	// cookies. Empty disables logging in (the admin API is off too).
	AdminToken string
	// API is the service's HTTP API. Required. The dashboard's API calls are
	// forwarded to it with the admin token as bearer credential.
	API http.Handler
	// Subscribe feeds the live updates. Required.
	Subscribe SubscribeFunc
	// Logger receives operational logs. Nil is quiet.
	Logger *slog.Logger
	// SessionTTL is how long a login lasts. Zero means 12h.
	SessionTTL time.Duration
	// KeepAlive is the idle interval between event-stream keep-alives. Zero
	// means 15s.
	KeepAlive time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Dashboard is the dashboard's HTTP handler; mount it at Path.
type Dashboard struct {
	cfg      Config
	log      *slog.Logger
	sess     *sessions
	csrf     *http.CrossOriginProtection
	mux      *http.ServeMux
	loginCSP string
}

var (
	//go:embed static/login.html
	loginHTML string
	//go:embed static/style.css
	styleCSS  string
	loginTmpl = template.Must(template.New("login").Parse(loginHTML))
)

// New checks cfg and returns the dashboard.
func New(cfg Config) (*Dashboard, error) {
	if cfg.API == nil || cfg.Subscribe == nil {
		return nil, errors.New("dashboard.New: Config.API and Config.Subscribe are required")
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 15 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sum := sha256.Sum256([]byte(styleCSS))
	d := &Dashboard{
		cfg:  cfg,
		log:  log,
		sess: newSessions(cfg.AdminToken, cfg.SessionTTL, cfg.Now),
		csrf: http.NewCrossOriginProtection(),
		mux:  http.NewServeMux(),
		// The login page inlines the stylesheet (nothing else is served
		// before login); its hash is the only inline style allowed.
		loginCSP: "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
			"'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	}
	d.csrf.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "cross-origin request refused")
	}))
	d.routes()
	return d, nil
}

func (d *Dashboard) routes() {
	m := d.mux
	m.HandleFunc("GET /ui/login", d.serveLogin)
	m.Handle("POST /ui/login", d.csrf.Handler(http.HandlerFunc(d.handleLogin)))
	m.Handle("POST /ui/logout", d.csrf.Handler(http.HandlerFunc(d.handleLogout)))
	m.HandleFunc("GET /ui/{$}", d.page(d.serveIndex))
	m.HandleFunc("GET /ui/static/{file}", d.page(d.serveStatic))
	m.HandleFunc("GET /ui/events", d.authAPI(d.serveEvents))
	m.Handle("/ui/api/", d.csrf.Handler(d.authAPI(d.serveAPI)))
	m.HandleFunc("/ui/", d.page(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no such page: "+r.URL.Path)
	}))
}

// ServeHTTP serves the dashboard's paths (under Path).
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	d.mux.ServeHTTP(w, r)
}

// loggedIn reports whether r carries a valid session cookie.
func (d *Dashboard) loggedIn(r *http.Request) bool {
	c, err := r.Cookie(CookieName)
	return err == nil && d.cfg.AdminToken != "" && d.sess.valid(c.Value)
}

// page wraps a page handler: without a session, go to the login page.
func (d *Dashboard) page(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.loggedIn(r) {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		next(w, r)
	}
}

// authAPI wraps a data handler: without a session, 401.
func (d *Dashboard) authAPI(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !d.loggedIn(r) {
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "not logged in to the dashboard")
			return
		}
		next(w, r)
	}
}

func (d *Dashboard) serveLogin(w http.ResponseWriter, r *http.Request) {
	if d.loggedIn(r) {
		http.Redirect(w, r, Path, http.StatusSeeOther)
		return
	}
	d.renderLogin(w, http.StatusOK, "")
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, status int, msg string) {
	if d.cfg.AdminToken == "" && msg == "" {
		msg = "This service has no admin token, so the dashboard is off."
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", d.loginCSP)
	w.WriteHeader(status)
	err := loginTmpl.Execute(w, struct {
		CSS   template.CSS
		Error string
	}{template.CSS(styleCSS), msg})
	if err != nil {
		d.log.Debug("dashboard: writing the login page failed", "err", err)
	}
}

// maxLoginBytes bounds the login form.
const maxLoginBytes = 4 << 10

func (d *Dashboard) handleLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBytes)
	if err := r.ParseForm(); err != nil {
		d.renderLogin(w, http.StatusBadRequest, "The login form could not be read.")
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	if d.cfg.AdminToken == "" || !d.sess.checkToken(tok) {
		d.log.Info("dashboard login refused", "remote", r.RemoteAddr)
		d.renderLogin(w, http.StatusUnauthorized, "That is not this service's admin token.")
		return
	}
	v, exp := d.sess.issue()
	http.SetCookie(w, &http.Cookie{
		Name:     CookieName,
		Value:    v,
		Path:     Path,
		Expires:  exp,
		MaxAge:   int(d.cfg.SessionTTL / time.Second),
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteStrictMode,
	})
	d.log.Info("dashboard login", "remote", r.RemoteAddr)
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

func (d *Dashboard) handleLogout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: "", Path: Path, MaxAge: -1,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// writeError answers with the API's error body.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	b, _ := json.Marshal(api.Error{Code: code, Message: msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
