package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/wiremesh/wiremesh/control/api"
)

// fuzzEnv is an env for fuzzing handlers: per-client rate limits off (the
// fuzzer is one client sending thousands of requests).
func fuzzEnv(f *testing.F) *env {
	e := newEnv(f, func(c *serverConfig) { c.limits.noRateLimits = true })
	e.t = f
	return e
}

// checkAnswer fails on a 5xx (but 507, pool exhausted) or an error answer
// that is not a well-formed api.Error with the status of its code.
func checkAnswer(t *testing.T, rec *httptest.ResponseRecorder, input any) {
	t.Helper()
	if rec.Code >= 500 && rec.Code != http.StatusInsufficientStorage {
		t.Fatalf("status %d for %q: %s", rec.Code, input, rec.Body.Bytes())
	}
	switch rec.Code {
	case http.StatusMovedPermanently, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		// ServeMux's path cleaning ("//", "/../"): nothing was served.
		if rec.Header().Get("Location") == "" {
			t.Fatalf("redirect without Location for %q", input)
		}
		return
	}
	if rec.Code >= 300 {
		var ae api.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &ae); err != nil || ae.Code == "" || api.StatusForCode(ae.Code) != rec.Code {
			t.Fatalf("status %d with body %q is not an api.Error (input %q)", rec.Code, rec.Body.Bytes(), input)
		}
	}
}

// FuzzPatchSelf sends arbitrary bodies to PATCH /v1/devices/self: never a
// 5xx, always a well-formed answer.
func FuzzPatchSelf(f *testing.F) {
	e := fuzzEnv(f)
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "fuzz")
	for _, s := range []string{
		`{}`, `{"hostname":"x"}`, `{"hostname":" "}`, `{"endpoints":["192.0.2.1:51820"]}`, `{"endpoints":[]}`,
		`{"endpoints":null}`, `{"endpoints":["[fe80::1%eth0]:1"]}`, `{"add_child_prefixes":["10.0.0.0/8"]}`,
		`{"add_child_prefixes":["100.64.0.0/10","::/0"]}`, `{"hostname":null,"x":1}`, `[]`, `{"hostname":"a"}{}`, ``,
	} {
		f.Add([]byte(s))
	}
	h := e.srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("PATCH", "/v1/devices/self", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+reg.DeviceToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		checkAnswer(t, rec, body)
		if rec.Code == http.StatusOK {
			var d api.Device
			if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil || d.ID != reg.DeviceID {
				t.Fatalf("PATCH %q answered %s", body, rec.Body.Bytes())
			}
		}
	})
}

// endAfterFirstWrite is a ResponseWriter that ends the request's context
// at the first write, so a watch stream stops after its first lines.
type endAfterFirstWrite struct {
	*httptest.ResponseRecorder
	cancel context.CancelFunc
}

func (w endAfterFirstWrite) Write(b []byte) (int, error) {
	defer w.cancel()
	return w.ResponseRecorder.Write(b)
}

// FuzzWatchQuery sends arbitrary zone names and query strings to the
// watch stream: a 4xx api.Error, or a stream whose lines are watch events.
func FuzzWatchQuery(f *testing.F) {
	e := fuzzEnv(f)
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "fuzz")
	e.mustRegister(tok, "other")
	for _, s := range []struct{ zone, query string }{
		{"default", ""}, {"default", "since=0"}, {"default", "since=1"}, {"default", "since=99999999"},
		{"default", "since=-1"}, {"default", "since=abc"}, {"default", "since=1&since=2"}, {"default", "since=%zz"},
		{"default", "since=9223372036854775808"}, {"other", ""}, {"", ""}, {"../x", "since=1"},
	} {
		f.Add(s.zone, s.query)
	}
	h := e.srv.Handler()
	f.Fuzz(func(t *testing.T, zone, query string) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, "GET", "/v1/zones/"+url.PathEscape(zone)+"/watch?"+query, nil)
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Authorization", "Bearer "+reg.DeviceToken)
		rec := httptest.NewRecorder()
		h.ServeHTTP(endAfterFirstWrite{rec, cancel}, req)
		checkAnswer(t, rec, zone+"?"+query)
		if rec.Code != http.StatusOK {
			return
		}
		sc := bufio.NewScanner(bytes.NewReader(rec.Body.Bytes()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev api.WatchEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Type == "" {
				t.Fatalf("watch %q?%q: bad line %q", zone, query, sc.Bytes())
			}
		}
	})
}
