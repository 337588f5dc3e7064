package control

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// randomToken returns prefix followed by 32 hex digits (128 random bits).
func randomToken(prefix string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return prefix + hex.EncodeToString(b[:]), nil
}

// bearer returns the token of an "Authorization: Bearer TOKEN" header, or "".
func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

var errUnauthorized = apiErr(api.CodeUnauthorized, "missing or invalid credentials")

// admin wraps an admin handler: the admin token, compared in constant time.
func (s *server) admin(next http.HandlerFunc) http.HandlerFunc {
	want := sha256.Sum256([]byte(s.cfg.AdminToken))
	return func(w http.ResponseWriter, r *http.Request) {
		if s.authBlocked(w, r) {
			return
		}
		tok := bearer(r)
		got := sha256.Sum256([]byte(tok))
		if s.cfg.AdminToken == "" || tok == "" || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			s.refuse(w, r, "admin", "", errUnauthorized)
			return
		}
		s.auditAdminAction(next, w, r)
	}
}

// deviceHandler is a handler authorized by a device token.
type deviceHandler func(w http.ResponseWriter, r *http.Request, d store.Device)

// device wraps a member handler: a device token, looked up by its SHA-256.
func (s *server) device(next deviceHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.authBlocked(w, r) {
			return
		}
		tok := bearer(r)
		if !strings.HasPrefix(tok, api.DeviceTokenPrefix) || len(tok) != len(api.DeviceTokenPrefix)+32 {
			s.refuse(w, r, "device", "", errUnauthorized)
			return
		}
		d, err := s.cfg.Store.DeviceByToken(r.Context(), sha256.Sum256([]byte(tok)))
		if errors.Is(err, store.ErrNotFound) {
			s.refuse(w, r, "device", "", errUnauthorized)
			return
		}
		if err != nil {
			writeError(w, s.storeErr(r.Context(), "device authentication", err))
			return
		}
		if !d.TokenExpires.IsZero() && !s.cfg.Now().Before(d.TokenExpires) {
			s.refuse(w, r, "device", d.ID, apiErr(api.CodeTokenExpired,
				"the device token expired at %s: register again with a join token", d.TokenExpires.UTC().Format(time.RFC3339)))
			return
		}
		next(w, r, d)
	}
}

// maxReplayEntries bounds the replay cache. A registration arriving while it
// is full of unexpired proofs is refused with 503 (retry later).
const maxReplayEntries = 1 << 16

// replayCache remembers accepted registration proofs until their timestamp
// leaves the skew window, so the same signed body cannot be replayed.
type replayCache struct {
	max int

	mu        sync.Mutex           // guards seen, nextPrune
	seen      map[string]time.Time // proof → when it may be forgotten
	nextPrune time.Time
}

// replayPruneEvery is how often add sweeps out expired proofs.
const replayPruneEvery = time.Minute

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: make(map[string]time.Time)}
}

var (
	errReplayed   = errors.New("replayed")
	errReplayFull = errors.New("replay cache full")
)

// add records proof until expires. errReplayed if it is known already.
func (c *replayCache) add(proof []byte, expires, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := string(proof)
	if exp, ok := c.seen[k]; ok && now.Before(exp) {
		return errReplayed
	}
	if len(c.seen) >= c.max || now.After(c.nextPrune) {
		for p, exp := range c.seen {
			if !now.Before(exp) {
				delete(c.seen, p)
			}
		}
		c.nextPrune = now.Add(replayPruneEvery)
		if len(c.seen) >= c.max {
			return errReplayFull
		}
	}
	c.seen[k] = expires
	return nil
}

func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
