package control

import (
	"errors"
	"net/http"
	"net/netip"
	"regexp"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

var zoneNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func validZoneName(s string) bool { return zoneNameRE.MatchString(s) }

// toAPIZone is z on the wire, with the prefix limits in force (defaults
// filled in).
func toAPIZone(z store.Zone) api.Zone {
	pol := z.Policy().Effective()
	return api.Zone{
		Name:           z.Name,
		IPv4Pool:       z.IPv4Pool,
		IPv6Pool:       z.IPv6Pool,
		AllowExitNodes: z.AllowExitNodes,
		MinPrefixBits4: pol.MinBits4,
		MinPrefixBits6: pol.MinBits6,
		MaxPrefixes:    pol.MaxPrefixes,
		CreatedAt:      z.CreatedAt,
	}
}

func toAPIToken(t store.JoinToken) api.JoinToken {
	return api.JoinToken{
		ID:        t.ID,
		Zone:      t.Zone,
		Reusable:  t.Reusable,
		Tags:      t.Tags,
		ExpiresAt: t.ExpiresAt,
		UsedAt:    t.UsedAt,
		CreatedAt: t.CreatedAt,
	}
}

// parsePool parses a zone pool of the given family (4 or 6).
func parsePool(field, s string, family int) (netip.Prefix, *api.Error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, apiErr(api.CodeInvalidPrefix, "%s %q: not a CIDR prefix", field, s)
	}
	if (family == 4) != p.Addr().Is4() || p.Addr().Zone() != "" {
		return netip.Prefix{}, apiErr(api.CodeInvalidPrefix, "%s %q: not an IPv%d prefix", field, s, family)
	}
	if err := ipam.ValidatePool(p); err != nil {
		return netip.Prefix{}, apiErr(api.CodeInvalidPrefix, "%s %q: %v", field, s, err)
	}
	return p, nil
}

func (s *server) handleCreateZone(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req api.CreateZoneRequest
	if aerr := decodeBody(w, r, &req); aerr != nil {
		writeError(w, aerr)
		return
	}
	if !validZoneName(req.Name) {
		writeError(w, apiErr(api.CodeBadRequest, "zone name %q: want 1-63 of a-z, 0-9 and '-', starting with a letter or digit", req.Name))
		return
	}
	z := store.Zone{
		Name:           req.Name,
		IPv4Pool:       ipam.DefaultIPv4PoolPrefix,
		IPv6Pool:       ipam.ULAPool(req.Name),
		AllowExitNodes: req.AllowExitNodes,
		MinPrefixBits4: req.MinPrefixBits4,
		MinPrefixBits6: req.MinPrefixBits6,
		MaxPrefixes:    req.MaxPrefixes,
		CreatedAt:      s.cfg.Now().UTC().Truncate(time.Second),
	}
	if err := z.Policy().Validate(); err != nil {
		writeError(w, apiErr(api.CodeBadRequest, "zone %q: %v", req.Name, err))
		return
	}
	var aerr *api.Error
	if req.IPv4Pool != "" {
		if z.IPv4Pool, aerr = parsePool("ipv4_pool", req.IPv4Pool, 4); aerr != nil {
			writeError(w, aerr)
			return
		}
	}
	if req.IPv6Pool != "" {
		if z.IPv6Pool, aerr = parsePool("ipv6_pool", req.IPv6Pool, 6); aerr != nil {
			writeError(w, aerr)
			return
		}
	}
	if err := s.cfg.Store.CreateZone(ctx, z); err != nil {
		if errors.Is(err, store.ErrExists) {
			writeError(w, apiErr(api.CodeConflict, "zone %q exists", req.Name))
			return
		}
		writeError(w, s.storeErr(ctx, "create zone", err))
		return
	}
	s.log.InfoContext(ctx, "zone created", "zone", z.Name, "ipv4_pool", z.IPv4Pool, "ipv6_pool", z.IPv6Pool)
	if got, err := s.cfg.Store.Zone(ctx, z.Name); err == nil {
		z = got
	}
	writeJSON(w, http.StatusCreated, toAPIZone(z))
}

func (s *server) handleListZones(w http.ResponseWriter, r *http.Request) {
	zs, err := s.cfg.Store.Zones(r.Context())
	writeList(s, w, r, "list zones", zs, err, toAPIZone)
}

func (s *server) handleGetZone(w http.ResponseWriter, r *http.Request) {
	z, ok := s.lookupZone(w, r, r.PathValue("zone"), "get zone")
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, toAPIZone(z))
}

// lookupZone returns the zone called name. When there is none (or name
// cannot be a zone's) it answers 404 not_found, when the store fails the
// store's error for op, and returns false.
func (s *server) lookupZone(w http.ResponseWriter, r *http.Request, name, op string) (store.Zone, bool) {
	if !validZoneName(name) {
		writeError(w, apiErr(api.CodeNotFound, "zone %q does not exist", name))
		return store.Zone{}, false
	}
	z, err := s.cfg.Store.Zone(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "zone %q does not exist", name))
		return store.Zone{}, false
	}
	if err != nil {
		writeError(w, s.storeErr(r.Context(), op, err))
		return store.Zone{}, false
	}
	return z, true
}

// maxTokenTTL bounds expires_in_seconds (ten years).
const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (s *server) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var req api.CreateTokenRequest
	if aerr := decodeBody(w, r, &req); aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.Zone == "" {
		req.Zone = api.DefaultZone
	}
	if !validZoneName(req.Zone) {
		writeError(w, apiErr(api.CodeBadRequest, "zone %q is not a valid zone name", req.Zone))
		return
	}
	if req.ExpiresInSeconds < 0 || req.ExpiresInSeconds > int64(maxTokenTTL/time.Second) {
		writeError(w, apiErr(api.CodeBadRequest, "expires_in_seconds %d: want 0 (never) to %d", req.ExpiresInSeconds, int64(maxTokenTTL/time.Second)))
		return
	}
	tags, aerr := checkTags(req.Tags)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	jt, err := s.createJoinToken(ctx, req.Zone, req.Reusable, time.Duration(req.ExpiresInSeconds)*time.Second, tags)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "zone %q does not exist", req.Zone))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(ctx, "create token", err))
		return
	}
	s.log.InfoContext(ctx, "join token created", "zone", jt.Zone, "id", jt.ID, "reusable", jt.Reusable, "tags", jt.Tags)
	writeJSON(w, http.StatusCreated, jt)
}

func (s *server) handleListTokens(w http.ResponseWriter, r *http.Request) {
	zone, ok := s.zoneQuery(w, r)
	if !ok {
		return
	}
	ts, err := s.cfg.Store.JoinTokens(r.Context(), zone)
	writeList(s, w, r, "list tokens", ts, err, toAPIToken)
}

func (s *server) handleDeleteToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := s.cfg.Store.DeleteJoinToken(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "token %q does not exist", id))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "delete token", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
