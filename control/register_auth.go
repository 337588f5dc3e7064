package control

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// authorizeRegistration checks the credentials of POST /v1/devices: the
// form of the join token, then the body and its proof of key possession,
// which is spent (remembered in memory and in the store) before the token
// is looked up, and finally the token itself. Spending the proof first
// means a signed body is usable once, whatever becomes of it: a body
// refused for its token (spent, expired, unknown) or failing later (a
// prefix conflict) cannot be presented again, and since the proof covers
// the token's hash it is worthless with any other token anyway.
//
// A body that does not decode is reported after the token, so a caller
// without a valid token learns nothing about the body rules. On error the
// returned request and token are as far as they got (for the audit log).
func (s *server) authorizeRegistration(w http.ResponseWriter, r *http.Request) (api.RegisterRequest, store.JoinToken, [32]byte, *api.Error) {
	ctx := r.Context()
	var req api.RegisterRequest
	secret, _, err := api.ParseJoinToken(bearer(r))
	if err != nil {
		return req, store.JoinToken{}, [32]byte{}, apiErr(api.CodeUnauthorized, "missing or malformed join token")
	}
	tokHash := api.JoinTokenHash(secret)
	body, aerr := readBody(w, r)
	if aerr != nil {
		return req, store.JoinToken{}, tokHash, aerr
	}
	decodeErr := decodeRegister(body, &req)
	if decodeErr == nil {
		if aerr := s.spendProof(ctx, &req, tokHash); aerr != nil {
			return req, store.JoinToken{}, tokHash, aerr
		}
	}
	tok, aerr := s.lookupJoinToken(ctx, tokHash)
	if aerr != nil {
		return req, store.JoinToken{}, tokHash, aerr
	}
	if decodeErr != nil {
		return req, tok, tokHash, decodeErr
	}
	return req, tok, tokHash, nil
}

// spendProof checks a registration's timestamp and proof (for the join
// token hashing to tokHash) and records the proof as used: first in the
// in-memory cache (the fast path for replays), then durably in the store
// (shared by replicas, kept across restarts). A proof is never forgotten
// before its timestamp leaves the skew window, whatever the outcome of the
// registration: a client retries with a newly signed body.
func (s *server) spendProof(ctx context.Context, req *api.RegisterRequest, tokHash [32]byte) *api.Error {
	now := s.cfg.Now()
	ts := time.Unix(req.Timestamp, 0)
	if d := now.Sub(ts); d > s.cfg.MaxClockSkew || d < -s.cfg.MaxClockSkew {
		return apiErr(api.CodeUnauthorized, "stale timestamp: %d is %s away from the service clock (max %s)",
			req.Timestamp, d.Round(time.Second), s.cfg.MaxClockSkew)
	}
	if err := req.Verify(s.cfg.PrivateKey, tokHash); err != nil {
		return apiErr(api.CodeUnauthorized, "registration proof does not verify for key %s and this join token", req.PublicKey)
	}
	expires := ts.Add(s.cfg.MaxClockSkew)
	// errReplayFull only skips the cache: the store still records the proof.
	if err := s.replay.add(req.Proof, expires, now); errors.Is(err, errReplayed) {
		return errReplayedRegistration
	}
	if err := s.cfg.Store.RecordProof(ctx, req.Proof, expires.UTC(), now.UTC()); err != nil {
		return s.storeErr(ctx, "register", err)
	}
	return nil
}

// refuseRegistration answers a registration error; an unauthorized one is
// a refused authentication (audited, counted against the client), naming
// the join token (tokID, when it was found) and the key that tried.
func (s *server) refuseRegistration(w http.ResponseWriter, r *http.Request, tokID string, key api.Key, aerr *api.Error) {
	if api.StatusForCode(aerr.Code) != http.StatusUnauthorized {
		writeError(w, aerr)
		return
	}
	if key.IsZero() { // the body did not get that far
		s.refuse(w, r, "join_token", tokID, aerr)
		return
	}
	s.refuse(w, r, "join_token", tokID, aerr, "key", key.String())
}

var errReplayedRegistration = apiErr(api.CodeUnauthorized, "replayed registration: this signed request was used already")
