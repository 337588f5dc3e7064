package control

import (
	"errors"
	"net/http"
	"net/netip"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

func toAPIDevice(d store.Device) api.Device {
	return api.Device{
		ID:            d.ID,
		Zone:          d.Zone,
		Hostname:      d.Hostname,
		PublicKey:     api.Key(d.PublicKey),
		IPv4:          d.IPv4,
		IPv6:          d.IPv6,
		ChildPrefixes: nonNil(d.Prefixes),
		Endpoints:     nonNil(d.Endpoints),
		Candidates:    toAPICandidates(d.Candidates),
		NAT:           api.NATType(d.NAT),
		Tags:          d.Tags,
		CreatedAt:     d.CreatedAt,
		UpdatedAt:     d.UpdatedAt,
		Ephemeral:     d.Ephemeral,
	}
}

func toPeer(d store.Device) api.Peer {
	return api.Peer{
		ID:            d.ID,
		Hostname:      d.Hostname,
		PublicKey:     api.Key(d.PublicKey),
		IPv4:          d.IPv4,
		IPv6:          d.IPv6,
		ChildPrefixes: nonNil(d.Prefixes),
		Endpoints:     nonNil(d.Endpoints),
		Online:        &d.Online,
		LastSeen:      d.LastSeen,
		Generation:    d.Generation,
		Candidates:    toAPICandidates(d.Candidates),
		NAT:           api.NATType(d.NAT),
	}
}

func (s *server) handleGetSelf(w http.ResponseWriter, r *http.Request, d store.Device) {
	writeJSON(w, http.StatusOK, toAPIDevice(d))
}

func (s *server) handlePatchSelf(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	var req api.UpdateSelfRequest
	if aerr := decodeBody(w, r, &req); aerr != nil {
		writeError(w, aerr)
		return
	}
	p := store.UpdateParams{Now: s.cfg.Now().UTC()}
	if req.Hostname != nil {
		h, aerr := checkHostname(*req.Hostname)
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		p.Hostname = &h
	}
	if req.Endpoints != nil {
		if aerr := checkEndpoints(*req.Endpoints); aerr != nil {
			writeError(w, aerr)
			return
		}
		eps := nonNil(*req.Endpoints)
		p.Endpoints = &eps
	}
	if aerr := reachUpdate(req, &p); aerr != nil {
		writeError(w, aerr)
		return
	}
	if len(req.AddChildPrefixes) > maxPrefixesPerRequest {
		writeError(w, apiErr(api.CodeBadRequest, "too many child prefixes: %d (max %d)", len(req.AddChildPrefixes), maxPrefixesPerRequest))
		return
	}
	if len(req.AddChildPrefixes) > 0 {
		zone, err := s.cfg.Store.Zone(ctx, d.Zone)
		if err != nil {
			writeError(w, s.storeErr(ctx, "update device", err))
			return
		}
		prefixes, aerr := checkPrefixes(zone, d.Prefixes, req.AddChildPrefixes)
		if aerr != nil {
			writeError(w, aerr)
			return
		}
		p.AddPrefixes = prefixes
	}
	nd, err := s.cfg.Store.UpdateDevice(ctx, d.ID, p)
	if err != nil {
		writeError(w, s.storeErr(ctx, "update device", err))
		return
	}
	s.hub.update(nd.Zone)
	writeJSON(w, http.StatusOK, toAPIDevice(nd))
}

// parsePathPrefix parses a prefix from a URL path strictly: canonical form
// only (what the service itself prints).
func parsePathPrefix(s string) (netip.Prefix, *api.Error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Zone() != "" || p != p.Masked() || p.String() != s {
		return netip.Prefix{}, apiErr(api.CodeInvalidPrefix, "prefix %q is not a canonical CIDR prefix", s)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, apiErr(api.CodeInvalidPrefix, "prefix %q is IPv4-mapped IPv6: write the IPv4 prefix", s)
	}
	return p, nil
}

func (s *server) handleReleaseSelf(w http.ResponseWriter, r *http.Request, d store.Device) {
	ctx := r.Context()
	p, aerr := parsePathPrefix(r.PathValue("prefix"))
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := s.cfg.Store.ReleasePrefix(ctx, d.Zone, p, d.ID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, apiErr(api.CodeNotFound, "prefix %s is not held by this device", p))
			return
		}
		writeError(w, s.storeErr(ctx, "release prefix", err))
		return
	}
	s.log.InfoContext(ctx, "prefix released", "zone", d.Zone, "prefix", p, "device", d.ID)
	s.hub.update(d.Zone)
	w.WriteHeader(http.StatusNoContent)
}

// zoneQuery reads ?zone= for admin list calls; "" means all zones. A zone
// that does not exist is 404.
func (s *server) zoneQuery(w http.ResponseWriter, r *http.Request) (string, bool) {
	z := r.URL.Query().Get("zone")
	if z == "" {
		return "", true
	}
	if !validZoneName(z) {
		writeError(w, apiErr(api.CodeBadRequest, "zone %q is not a valid zone name", z))
		return "", false
	}
	if _, ok := s.lookupZone(w, r, z, "look up zone"); !ok {
		return "", false
	}
	return z, true
}

func (s *server) handleListDevices(w http.ResponseWriter, r *http.Request) {
	zone, ok := s.zoneQuery(w, r)
	if !ok {
		return
	}
	ds, err := s.cfg.Store.Devices(r.Context(), zone)
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "list devices", err))
		return
	}
	out := make([]api.Device, 0, len(ds))
	for _, d := range ds {
		out = append(out, withPresence(d))
	}
	if out, err = s.withStats(r.Context(), zone, out, ds); err != nil {
		writeError(w, s.storeErr(r.Context(), "list devices", err))
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleGetDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	d, err := s.cfg.Store.Device(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "device %q does not exist", id))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "get device", err))
		return
	}
	zone, err := s.cfg.Store.Devices(r.Context(), d.Zone)
	var out []api.Device
	if err == nil {
		out, err = s.withStats(r.Context(), d.Zone, []api.Device{withPresence(d)}, zone)
	}
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "get device", err))
		return
	}
	writeJSON(w, http.StatusOK, out[0])
}

func (s *server) handleDeleteDevice(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	revoke, aerr := boolQuery(r, "revoke")
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	d, err := s.cfg.Store.Device(ctx, id)
	switch {
	case err == nil && revoke:
		err = s.cfg.Store.RevokeDevice(ctx, id, s.cfg.Now().UTC())
	case err == nil:
		err = s.cfg.Store.DeleteDevice(ctx, id)
	}
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, apiErr(api.CodeNotFound, "device %q does not exist", id))
		return
	}
	if err != nil {
		writeError(w, s.storeErr(ctx, "delete device", err))
		return
	}
	s.log.InfoContext(ctx, "device deleted", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname, "revoked", revoke)
	s.relay.dropDevice(d.ID, "the device was deleted or revoked")
	s.hub.update(d.Zone)
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) handleListPrefixes(w http.ResponseWriter, r *http.Request) {
	zone, ok := s.zoneQuery(w, r)
	if !ok {
		return
	}
	ps, err := s.cfg.Store.Prefixes(r.Context(), zone)
	writeList(s, w, r, "list prefixes", ps, err, func(p store.PrefixEntry) api.PrefixEntry {
		return api.PrefixEntry{Zone: p.Zone, Prefix: p.Prefix, DeviceID: p.DeviceID, Hostname: p.Hostname}
	})
}

func (s *server) handleReleaseAdmin(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	zone := r.PathValue("zone")
	if !validZoneName(zone) {
		writeError(w, apiErr(api.CodeBadRequest, "zone %q is not a valid zone name", zone))
		return
	}
	p, aerr := parsePathPrefix(r.PathValue("prefix"))
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	if err := s.cfg.Store.ReleasePrefix(ctx, zone, p, ""); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, apiErr(api.CodeNotFound, "prefix %s is not allocated in zone %q", p, zone))
			return
		}
		writeError(w, s.storeErr(ctx, "release prefix", err))
		return
	}
	s.log.InfoContext(ctx, "prefix released by admin", "zone", zone, "prefix", p)
	s.hub.update(zone)
	w.WriteHeader(http.StatusNoContent)
}
