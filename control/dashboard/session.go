package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// sessions issues and checks the dashboard's session cookies. A session is
// "EXPIRY.MAC": the expiry in Unix seconds and an HMAC-SHA256 of it keyed by
// a key derived from the admin token. Nothing is kept on the server, so a
// session survives a restart and works on every replica sharing the admin
// token; changing the admin token ends every session. The admin token
// itself never leaves the login request.
type sessions struct {
	key   [32]byte
	admin [32]byte // SHA-256 of the admin token, for the login check
	ttl   time.Duration
	now   func() time.Time
}

func newSessions(adminToken string, ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{
		key:   sha256.Sum256([]byte("wiremesh dashboard session key\x00" + adminToken)),
		admin: sha256.Sum256([]byte(adminToken)),
		ttl:   ttl,
		now:   now,
	}
}

// checkToken reports whether tok is the admin token (constant time).
func (s *sessions) checkToken(tok string) bool {
	got := sha256.Sum256([]byte(tok))
	return tok != "" && subtle.ConstantTimeCompare(got[:], s.admin[:]) == 1
}

// issue returns a new session value and its expiry.
func (s *sessions) issue() (string, time.Time) {
	exp := s.now().Add(s.ttl).Truncate(time.Second)
	e := strconv.FormatInt(exp.Unix(), 10)
	return e + "." + s.mac(e), exp
}

// valid reports whether v is a session issued by s that has not expired.
func (s *sessions) valid(v string) bool {
	e, mac, ok := strings.Cut(v, ".")
	if !ok || len(e) > 20 {
		return false
	}
	if subtle.ConstantTimeCompare([]byte(mac), []byte(s.mac(e))) != 1 {
		return false
	}
	exp, err := strconv.ParseInt(e, 10, 64)
	return err == nil && s.now().Unix() < exp
}

func (s *sessions) mac(expiry string) string {
	h := hmac.New(sha256.New, s.key[:])
	h.Write([]byte("wiremesh dashboard session\x00" + expiry))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}
