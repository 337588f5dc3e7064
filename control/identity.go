package control

import (
	"crypto/sha256"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// Defaults of the identity settings of serverConfig.
const (
	defaultDeviceTokenLifetime = 90 * 24 * time.Hour
	defaultEphemeralTimeout    = 10 * time.Minute
)

// deviceTokenExpiry is when a device token issued now expires (zero:
// never).
func (s *server) deviceTokenExpiry() time.Time {
	if s.cfg.DeviceTokenLifetime < 0 {
		return time.Time{}
	}
	return s.cfg.Now().UTC().Add(s.cfg.DeviceTokenLifetime).Truncate(time.Second)
}

// boolQuery reads an optional boolean query parameter (absent: false).
func boolQuery(r *http.Request, name string) (bool, *api.Error) {
	q := r.URL.Query()
	if !q.Has(name) {
		return false, nil
	}
	v := q.Get(name)
	if v == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, apiErr(api.CodeBadRequest, "%s=%q: want true or false", name, v)
	}
	return b, nil
}

// handleDeleteSelf is DELETE /v1/devices/self: a member leaving for good
// (an ephemeral node closing, `wiremesh down`).
func (s *server) handleDeleteSelf(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	if err := s.cfg.Store.DeleteDevice(ctx, d.ID); err != nil {
		writeError(w, s.storeErr(ctx, "delete device", err))
		return
	}
	s.log.InfoContext(ctx, "device left", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname, "ephemeral", d.Ephemeral)
	s.relay.dropDevice(d.ID, "the device was deleted")
	s.hub.update(d.Zone)
	w.WriteHeader(http.StatusNoContent)
}

// handleRotateToken is POST /v1/devices/self/token: a new device token;
// every other token of the device stops working.
func (s *server) handleRotateToken(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	tok, err := randomToken(api.DeviceTokenPrefix)
	if err != nil {
		writeError(w, apiErr(api.CodeInternal, "generating device token failed"))
		return
	}
	exp := s.deviceTokenExpiry()
	if err := s.cfg.Store.RotateDeviceToken(ctx, d.ID, sha256.Sum256([]byte(tok)), exp, s.cfg.Now().UTC()); err != nil {
		writeError(w, s.storeErr(ctx, "rotate device token", err))
		return
	}
	s.log.InfoContext(ctx, "device token rotated", "zone", d.Zone, "id", d.ID)
	writeJSON(w, http.StatusOK, api.RotateTokenResponse{DeviceToken: tok, ExpiresAt: exp})
}

// handleRotateKey is POST /v1/devices/self/key: the device proves it holds
// its current key and the new one, and keeps its id, addresses, prefixes
// and tokens under the new key; the old key is refused from then on.
func (s *server) handleRotateKey(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	var req api.RotateKeyRequest
	if aerr := decodeBody(w, r, &req); aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := req.NewPublicKey.CheckPublic(); err != nil {
		writeError(w, apiErr(api.CodeInvalidKey, "new_public_key: %v", err))
		return
	}
	now := s.cfg.Now()
	ts := time.Unix(req.Timestamp, 0)
	if dt := now.Sub(ts); dt > s.cfg.MaxClockSkew || dt < -s.cfg.MaxClockSkew {
		s.refuse(w, r, "device", d.ID, apiErr(api.CodeUnauthorized, "stale timestamp: %d is %s away from the service clock (max %s)",
			req.Timestamp, dt.Round(time.Second), s.cfg.MaxClockSkew))
		return
	}
	if req.Verify(s.cfg.PrivateKey, d.ID, api.Key(d.PublicKey)) != nil {
		s.refuse(w, r, "device", d.ID, apiErr(api.CodeUnauthorized, "key rotation proofs do not verify for the old key %s and the new key %s", api.Key(d.PublicKey), req.NewPublicKey))
		return
	}
	expires := ts.Add(s.cfg.MaxClockSkew)
	if err := s.replay.add(req.OldProof, expires, now); errors.Is(err, errReplayed) {
		s.refuse(w, r, "device", d.ID, apiErr(api.CodeUnauthorized, "replayed key rotation: this signed request was used already"))
		return
	}
	if err := s.cfg.Store.RecordProof(ctx, req.OldProof, expires.UTC(), now.UTC()); err != nil {
		if errors.Is(err, store.ErrReplayed) {
			s.refuse(w, r, "device", d.ID, apiErr(api.CodeUnauthorized, "replayed key rotation: this signed request was used already"))
			return
		}
		writeError(w, s.storeErr(ctx, "rotate key", err))
		return
	}
	nd, err := s.cfg.Store.RotateKey(ctx, d.ID, store.Key(req.NewPublicKey), now.UTC())
	if err != nil {
		writeError(w, s.storeErr(ctx, "rotate key", err))
		return
	}
	s.log.InfoContext(ctx, "device key rotated", "zone", d.Zone, "id", d.ID, "old", api.Key(d.PublicKey), "new", req.NewPublicKey)
	s.relay.dropDevice(d.ID, "the device took a new key") // its relay connections speak for the old key
	s.hub.update(d.Zone)
	writeJSON(w, http.StatusOK, toAPIDevice(nd))
}
