package dashboard_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// NotesEnv names a file to which a skipped browser test appends one line,
// so that CI prints it (go test hides the output of passing packages).
const NotesEnv = "WIREMESH_TEST_NOTES"

// ScreenshotEnv, when set, names a file where TestDashboardInBrowser also
// writes its final screenshot (how docs/dashboard.png is made; see the
// README).
const ScreenshotEnv = "WIREMESH_DASHBOARD_SCREENSHOT"

// findChromium returns the browser to drive, or skips the test loudly.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WIREMESH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "browser test did not run: no chromium on PATH (Debian: apt-get install chromium; or set WIREMESH_CHROMIUM)"
	if path := os.Getenv(NotesEnv); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			fmt.Fprintln(f, msg)
			f.Close()
		}
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless Chromium that accepts the test service's
// self-signed certificate, and returns its context.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(findChromium(t)),
		chromedp.WindowSize(1360, 900),
		chromedp.Flag("ignore-certificate-errors", true), // the service's self-signed certificate, on 127.0.0.1
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("font-render-hinting", "none"),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	return ctx
}

// waitJS evaluates a JavaScript predicate in the page until it is true
// (errors while the page navigates are retried), failing after a minute.
func waitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main") ? document.querySelector("main").innerHTML.slice(0, 6000) : ""`))
	t.Fatalf("waiting in the browser for %s (%s): last error %v\npage: %s", what, expr, last, page)
}

func screenshot(t *testing.T, ctx context.Context, name string) []byte {
	t.Helper()
	b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(t.TempDir(), name), b, 0o644))
	return b
}

// TestDashboardInBrowser drives the dashboard in a real headless Chromium:
// log in with the admin token, watch members join and a child prefix
// appear live (no reload), see the paths, handshakes and bytes members
// report, create and revoke a join token, and see a member go offline.
func TestDashboardInBrowser(t *testing.T) {
	ctx := browser(t)
	srv := meshtest.NewServer(t)

	// Nothing but the login page without a session.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/ui/")))
	waitJS(t, ctx, "the login page", `location.pathname === "/ui/login" && !!document.querySelector("#token")`)
	screenshot(t, ctx, "login.png")

	// A wrong token is refused.
	require.NoError(t, chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#token"), "wma_wrong"), chromedp.Click(chromedp.CSS("#login"))))
	waitJS(t, ctx, "the refusal", `!!document.querySelector("#login-error")`)

	require.NoError(t, chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#token"), srv.AdminToken), chromedp.Click(chromedp.CSS("#login"))))
	waitJS(t, ctx, "the dashboard, live", `location.pathname === "/ui/" && document.querySelector("#live").textContent === "live"`)
	waitJS(t, ctx, "an empty zone", `document.querySelector("#members td.empty") !== null`)

	// A member joins: it appears online without a reload.
	alpha := meshtest.Join(t, srv, mesh.WithHostname("alpha"))
	waitJS(t, ctx, "alpha online in the table", `!!document.querySelector('#members tr[data-host="alpha"].online')`)
	waitJS(t, ctx, "alpha in the picture", `!!document.querySelector('#mesh g.node[data-host="alpha"][data-online="true"]')`)

	// Routers join with child prefixes: the prefixes appear with their owner.
	bravo := meshtest.Join(t, srv, mesh.WithHostname("bravo"), mesh.WithChildPrefix(netip.MustParsePrefix("10.77.0.0/24")))
	waitJS(t, ctx, "bravo's prefix", `(() => { const r = document.querySelector('#prefixes tr[data-prefix="10.77.0.0/24"]'); return !!r && r.textContent.includes("bravo"); })()`)
	waitJS(t, ctx, "the prefix in the picture", `[...document.querySelectorAll('#mesh g.node[data-host="bravo"] text.prefix')].some(e => e.textContent === "10.77.0.0/24")`)
	meshtest.Join(t, srv, mesh.WithHostname("charlie"),
		mesh.WithChildPrefix(netip.MustParsePrefix("172.24.0.0/24")), mesh.WithChildPrefix(netip.MustParsePrefix("172.28.5.0/24")))
	// A state directory: a durable member, which stays listed when it stops.
	delta := meshtest.Join(t, srv, mesh.WithHostname("delta"), mesh.WithStateDir(t.TempDir()))
	waitJS(t, ctx, "four members", `document.querySelectorAll('#members tr.online').length === 4`)

	// Traffic between alpha and bravo: each reports its direct path, the
	// handshake and the bytes (members report within seconds of a path
	// changing), and the picture draws their link as direct.
	pingCtx, cancelPing := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelPing()
	_, err := alpha.Ping(pingCtx, bravo.Addr())
	require.NoError(t, err)
	_, err = bravo.Ping(pingCtx, alpha.Addr())
	require.NoError(t, err)
	for host, peer := range map[string]string{"alpha": "bravo", "bravo": "alpha"} {
		waitJS(t, ctx, host+"'s direct path, handshake and bytes",
			`(() => { const c = document.querySelector('#members tr[data-host="`+host+`"] td.stats');
			return !!c && Number(c.dataset.direct) >= 1 && c.dataset.handshake !== "" && Number(c.dataset.rx) > 0 && Number(c.dataset.tx) > 0 &&
				/^[0-9]+ direct$/.test(c.querySelector(".path.direct").textContent) && c.querySelector(".handshake").textContent.startsWith("handshake ") &&
				/↓ [0-9.]+ (B|KiB)/.test(c.querySelector(".traffic").textContent) && c.title.includes("`+peer+`: direct, handshake "); })()`)
	}
	waitJS(t, ctx, "the alpha-bravo link drawn direct", `!!document.querySelector('#mesh line[data-pair="alpha bravo"][data-path="direct"]')`)
	waitJS(t, ctx, "every member's report", `document.querySelectorAll('#members td.stats[data-stats="report"]').length === 4`)

	// A durable member stops: it goes offline, with a last-seen time.
	require.NoError(t, delta.Close())
	waitJS(t, ctx, "delta offline", `!!document.querySelector('#members tr[data-host="delta"].offline') && !!document.querySelector('#mesh g.node[data-host="delta"][data-online="false"]')`)

	// Create a join token, shown once; revoke it.
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#token-create"))))
	waitJS(t, ctx, "the new token", `document.querySelector("#new-token-value").textContent.startsWith("wmj_")`)
	tok, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#new-token-value").textContent`))
	require.NoError(t, err)
	ts, err := srv.AdminClient(t).Tokens(context.Background(), "default")
	require.NoError(t, err)
	require.Len(t, ts, 2, "meshtest's token and the new one")
	var id string
	for _, jt := range ts {
		if !jt.Reusable {
			id = jt.ID
		}
	}
	require.NotEmpty(t, id)
	require.NotContains(t, id, strings.TrimPrefix(tok, "wmj_"))
	screenshot(t, ctx, "token.png")
	require.NoError(t, chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`button[data-revoke="`+id+`"]`))))
	waitJS(t, ctx, "the token gone", `!document.querySelector('#tokens tr[data-token="`+id+`"]') && document.querySelector("#new-token").hidden`)
	ts, err = srv.AdminClient(t).Tokens(context.Background(), "default")
	require.NoError(t, err)
	require.Len(t, ts, 1)

	b := screenshot(t, ctx, "dashboard.png")
	if out := os.Getenv(ScreenshotEnv); out != "" {
		require.NoError(t, os.WriteFile(out, compactPNG(t, b), 0o644))
		t.Logf("screenshot written to %s", out)
	}
}

// compactPNG re-encodes a PNG with the best compression.
func compactPNG(t *testing.T, b []byte) []byte {
	t.Helper()
	img, _, err := image.Decode(bytes.NewReader(b))
	require.NoError(t, err)
	var out bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	require.NoError(t, enc.Encode(&out, img))
	return out.Bytes()
}
