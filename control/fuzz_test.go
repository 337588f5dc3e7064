package control

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/wiremesh/wiremesh/control/api"
)

// FuzzRegister sends arbitrary bodies to POST /v1/devices with a valid join
// token: the answer is never a 5xx (nothing malformed reaches the store
// unchecked) and the handler never panics.
func FuzzRegister(f *testing.F) {
	e := fuzzEnv(f)
	tok := e.joinToken(api.DefaultZone, true)
	for _, prefixes := range [][]string{nil, {"172.24.0.0/24"}, {"10.1.2.3/16"}, {"::/0"}, {"fd00:1::/64", "fd00:1::/64"}} {
		b, _ := json.Marshal(e.request(tok, newDevice(), "seed", prefixes...))
		f.Add(b)
	}
	f.Add([]byte(`{"public_key":"AAAA","proof":"AA=="}`))
	f.Add([]byte(`{"public_key":null}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"endpoints":["[::1%eth0]:1"],"requested_ipv4":"::1"}`))
	h := e.srv.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/v1/devices", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusInsufficientStorage {
			t.Fatalf("status %d for body %q: %s", rec.Code, body, rec.Body.Bytes())
		}
		var ae api.Error
		if rec.Code >= 300 {
			if err := json.Unmarshal(rec.Body.Bytes(), &ae); err != nil || ae.Code == "" || api.StatusForCode(ae.Code) != rec.Code {
				t.Fatalf("status %d with body %q is not an api.Error", rec.Code, rec.Body.Bytes())
			}
		}
	})
}
