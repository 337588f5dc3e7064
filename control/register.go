package control

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// Limits on list fields of member requests.
const (
	maxPrefixesPerRequest  = 64
	maxEndpointsPerRequest = 32
	maxHostnameLen         = 63
)

func (s *server) handleRegister(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if !s.allowRegistration(w, r) {
		return
	}
	req, tok, tokHash, aerr := s.authorizeRegistration(w, r)
	if aerr != nil {
		s.refuseRegistration(w, r, tok.ID, req.PublicKey, aerr)
		return
	}

	zoneName := req.Zone
	if zoneName == "" {
		zoneName = tok.Zone
	}
	zone, err := s.cfg.Store.Zone(ctx, zoneName)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "zone %q does not exist", zoneName))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(ctx, "register", err))
		return
	}
	if zone.Name != tok.Zone {
		s.refuseRegistration(w, r, tok.ID, req.PublicKey, apiErr(api.CodeUnauthorized, "join token is not valid for zone %q", zoneName))
		return
	}

	hostname, aerr := checkHostname(req.Hostname)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	prefixes, aerr := checkPrefixes(zone, nil, req.ChildPrefixes)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if aerr := checkEndpoints(req.Endpoints); aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.RequestedIPv4.IsValid() && (!req.RequestedIPv4.Is4() || req.RequestedIPv4.Zone() != "") {
		writeError(w, apiErr(api.CodeBadRequest, "requested_ipv4 %q is not an IPv4 address", req.RequestedIPv4))
		return
	}

	devTok, err := randomToken(api.DeviceTokenPrefix)
	if err != nil {
		writeError(w, apiErr(api.CodeInternal, "generating device token failed"))
		return
	}
	tokExpires := s.deviceTokenExpiry()
	d, created, err := s.cfg.Store.Register(ctx, store.RegisterParams{
		Zone:               zone.Name,
		JoinTokenHash:      tokHash,
		DeviceTokenHash:    sha256.Sum256([]byte(devTok)),
		DeviceTokenExpires: tokExpires,
		PublicKey:          store.Key(req.PublicKey),
		Hostname:           hostname,
		Ephemeral:          req.Ephemeral,
		Prefixes:           prefixes,
		Endpoints:          req.Endpoints,
		RequestedIPv4:      req.RequestedIPv4,
		// The proof was spent by authorizeRegistration already.
		Now: s.cfg.Now().UTC(),
	})
	if err != nil { // unauthorized if the token was spent meanwhile
		s.refuseRegistration(w, r, tok.ID, req.PublicKey, s.storeErr(ctx, "register", err))
		return
	}
	s.metrics.registrations.WithLabelValues(map[bool]string{true: "created", false: "updated"}[created]).Inc()
	s.log.InfoContext(ctx, "device registered", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname,
		"ipv4", d.IPv4, "created", created)
	s.hub.update(d.Zone)
	writeRegistered(w, d, zone, created, devTok, tokExpires)
}

// writeRegistered answers a successful registration: 201 for a new device,
// 200 for a known key.
func writeRegistered(w http.ResponseWriter, d store.Device, zone store.Zone, created bool, devTok string, tokExpires time.Time) {
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, api.RegisterResponse{
		DeviceID:      d.ID,
		Zone:          d.Zone,
		Hostname:      d.Hostname,
		IPv4:          d.IPv4,
		IPv6:          d.IPv6,
		ZoneIPv4:      zone.IPv4Pool,
		ZoneIPv6:      zone.IPv6Pool,
		ChildPrefixes: nonNil(d.Prefixes),
		DeviceToken:   devTok,

		DeviceTokenExpiresAt: tokExpires,
		Ephemeral:            d.Ephemeral,
	})
}

// decodeRegister parses and checks the shape of a registration body (no
// store access): known fields only, a canonical X25519 public key
// (api.ParsePublicKey), a 32-byte proof.
func decodeRegister(body []byte, req *api.RegisterRequest) *api.Error {
	// A bad key is its own error code; find it before the generic decoder
	// reports it as malformed JSON.
	var probe struct {
		PublicKey *string `json:"public_key"`
	}
	if aerr := decodeLoose(body, &probe); aerr != nil {
		return aerr
	}
	if probe.PublicKey == nil {
		return apiErr(api.CodeInvalidKey, "public_key is missing")
	}
	if _, err := api.ParsePublicKey(*probe.PublicKey); err != nil {
		return apiErr(api.CodeInvalidKey, "public_key: %v", err)
	}
	if aerr := decodeJSON(body, req); aerr != nil {
		return aerr
	}
	if len(req.Proof) != 32 {
		return apiErr(api.CodeUnauthorized, "registration proof must be 32 bytes, got %d", len(req.Proof))
	}
	if len(req.ChildPrefixes) > maxPrefixesPerRequest {
		return apiErr(api.CodeBadRequest, "too many child prefixes: %d (max %d)", len(req.ChildPrefixes), maxPrefixesPerRequest)
	}
	if req.Zone != "" && !validZoneName(req.Zone) {
		return apiErr(api.CodeBadRequest, "zone %q is not a valid zone name", req.Zone)
	}
	return nil
}

// lookupJoinToken finds a usable join token by hash. The store checks it
// again inside the registration transaction; this early look-up gives the
// zone (and its prefix policy) and refuses bad tokens before any work.
func (s *server) lookupJoinToken(ctx context.Context, hash [32]byte) (store.JoinToken, *api.Error) {
	t, err := s.cfg.Store.JoinTokenByHash(ctx, hash)
	if errors.Is(err, store.ErrNotFound) {
		return store.JoinToken{}, apiErr(api.CodeUnauthorized, "join token unknown, expired, or already used")
	}
	if err != nil {
		return store.JoinToken{}, s.storeErr(ctx, "register", err)
	}
	now := s.cfg.Now()
	expired := !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
	used := !t.Reusable && !t.UsedAt.IsZero()
	if !expired && !used {
		return t, nil
	}
	return store.JoinToken{}, apiErr(api.CodeUnauthorized, "join token unknown, expired, or already used")
}

// checkHostname trims and validates a hostname: 1–63 bytes of printable
// characters without spaces (which become '-').
func checkHostname(h string) (string, *api.Error) {
	t := strings.TrimSpace(h)
	if t == "" {
		return "", apiErr(api.CodeBadRequest, "hostname is empty")
	}
	if !utf8.ValidString(t) || len(t) > maxHostnameLen {
		return "", apiErr(api.CodeBadRequest, "hostname %q: must be 1 to %d bytes of UTF-8", h, maxHostnameLen)
	}
	var b strings.Builder
	for _, r := range t {
		switch {
		case unicode.IsSpace(r):
			b.WriteByte('-')
		case !unicode.IsPrint(r):
			return "", apiErr(api.CodeBadRequest, "hostname %q: contains a non-printable character", h)
		default:
			b.WriteRune(r)
		}
	}
	return b.String(), nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
