package control

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/policy"
	"github.com/wiremesh/wiremesh/control/store"
)

// maxTokenTags bounds the tags of one join token.
const maxTokenTags = 32

// checkTags validates the tags of a join token and returns them sorted
// without duplicates.
func checkTags(tags []string) ([]string, *api.Error) {
	if len(tags) > maxTokenTags {
		return nil, apiErr(api.CodeBadRequest, "%d tags: at most %d per token", len(tags), maxTokenTags)
	}
	for _, t := range tags {
		if err := policy.CheckTagName(t); err != nil {
			return nil, apiErr(api.CodeInvalidSelector, "%v", err)
		}
	}
	out := slices.Clone(tags)
	slices.Sort(out)
	return slices.Compact(out), nil
}

// policyZone reads the {zone} of a policy path and checks it exists.
func (s *server) policyZone(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("zone")
	if _, ok := s.lookupZone(w, r, name, "look up zone"); !ok {
		return "", false
	}
	return name, true
}

func toAPIPolicy(p store.ZonePolicy) api.ZonePolicy {
	out := api.ZonePolicy{Zone: p.Zone, Revision: p.Rev, UpdatedAt: p.UpdatedAt}
	out.Document = string(p.Document)
	return out
}

func (s *server) handleGetPolicy(w http.ResponseWriter, r *http.Request) {
	zone, ok := s.policyZone(w, r)
	if !ok {
		return
	}
	p, err := s.cfg.Store.Policy(r.Context(), zone)
	if err != nil {
		writeError(w, s.storeErr(r.Context(), "get policy", err))
		return
	}
	writeJSON(w, http.StatusOK, toAPIPolicy(p))
}

// handleSetPolicy takes the policy document as the body. A document that
// does not parse is refused with its line; the policy in force stays.
func (s *server) handleSetPolicy(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	zone, ok := s.policyZone(w, r)
	if !ok {
		return
	}
	doc, aerr := readBody(w, r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	p, err := policy.Parse(doc)
	if err != nil {
		writeError(w, policyErr(err))
		return
	}
	s.storePolicy(ctx, w, zone, doc, len(p.Rules))
}

func (s *server) handleDeletePolicy(w http.ResponseWriter, r *http.Request) {
	zone, ok := s.policyZone(w, r)
	if !ok {
		return
	}
	s.storePolicy(r.Context(), w, zone, nil, 0)
}

// storePolicy stores a checked document (nil: remove the policy), tells
// the watchers and answers with the stored policy.
func (s *server) storePolicy(ctx context.Context, w http.ResponseWriter, zone string, doc []byte, rules int) {
	stored, err := s.cfg.Store.SetPolicy(ctx, zone, doc, s.cfg.Now().UTC())
	if err != nil {
		writeError(w, s.storeErr(ctx, "set policy", err))
		return
	}
	s.hub.update(zone)
	if doc == nil {
		s.log.InfoContext(ctx, "policy removed: the zone allows everything", "zone", zone, "rev", stored.Rev, "by", "admin token")
	} else {
		sum := sha256.Sum256(doc)
		s.log.InfoContext(ctx, "policy set", "zone", zone, "rev", stored.Rev, "rules", rules,
			"sha256", hex.EncodeToString(sum[:]), "by", "admin token")
	}
	writeJSON(w, http.StatusOK, toAPIPolicy(stored))
}

// policyErr turns a parse error into its API error, line included.
func policyErr(err error) *api.Error {
	var pe *policy.Error
	if !errors.As(err, &pe) {
		return apiErr(api.CodeInvalidPolicy, "%v", err)
	}
	e := apiErr(pe.Code, "%s", pe.Msg)
	if pe.Line > 0 {
		e.Message = "line " + strconv.Itoa(pe.Line) + ": " + pe.Msg
	}
	e.Line = pe.Line
	return e
}

func (s *server) handleCheckPolicy(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	zone, ok := s.policyZone(w, r)
	if !ok {
		return
	}
	var req api.PolicyCheckRequest
	if aerr := decodeBody(w, r, &req); aerr != nil {
		writeError(w, aerr)
		return
	}
	if req.Proto == "" {
		req.Proto = api.ProtoTCP
	}
	proto, ok := policy.ParseProto(req.Proto)
	if !ok {
		writeError(w, apiErr(api.CodeInvalidProto, "proto %q: want tcp, udp, icmp or any", req.Proto))
		return
	}
	zp, err := s.cfg.Store.Policy(ctx, zone)
	if err != nil {
		writeError(w, s.storeErr(ctx, "check policy", err))
		return
	}
	devices, err := s.cfg.Store.Devices(ctx, zone)
	if err != nil {
		writeError(w, s.storeErr(ctx, "check policy", err))
		return
	}
	members := make([]policy.Member, len(devices))
	for i, d := range devices {
		members[i] = memberOf(d)
	}
	res, aerr := checkFlow(zp, members, req, proto)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// checkFlow resolves the request's addresses and evaluates the policy.
func checkFlow(zp store.ZonePolicy, members []policy.Member, req api.PolicyCheckRequest, proto policy.Proto) (api.PolicyCheck, *api.Error) {
	host, portStr, err := net.SplitHostPort(req.To)
	if err != nil {
		return api.PolicyCheck{}, apiErr(api.CodeBadRequest, "to %q: want HOST:PORT or ADDR:PORT ([v6]:PORT)", req.To)
	}
	var port uint16
	if pr, err := api.ParsePortRange(portStr); err == nil && pr.First == pr.Last {
		port = pr.First
	} else if proto == policy.ProtoTCP || proto == policy.ProtoUDP {
		return api.PolicyCheck{}, apiErr(api.CodeInvalidPort, "to %q: port %q: want one port, 1-65535", req.To, portStr)
	}
	dst, aerr := resolveAddr("to", host, members, netip.Addr{})
	if aerr != nil {
		return api.PolicyCheck{}, aerr
	}
	src, aerr := resolveAddr("from", req.From, members, dst)
	if aerr != nil {
		return api.PolicyCheck{}, aerr
	}
	out := api.PolicyCheck{Src: src.String(), Dst: dst.String()}
	var doc *policy.Policy
	if zp.Document != nil {
		if doc, err = policy.Parse(zp.Document); err != nil {
			doc = &policy.Policy{Tags: map[string][]string{}} // denies everything, as the hub does
		}
	}
	if doc == nil {
		doc = &policy.Policy{Rules: []policy.Rule{{From: []policy.Selector{{Kind: policy.KindAny}}, To: []policy.Dest{{Selector: policy.Selector{Kind: policy.KindAny}}}}}}
	}
	c := policy.Compile(doc, members, nil)
	res := c.Check(src, dst, proto, port)
	if res.From >= 0 {
		out.FromHost = members[res.From].Hostname
	}
	if res.To >= 0 {
		out.ToHost = members[res.To].Hostname
	}
	out.Allowed, out.Reason = res.Allowed, res.Reason
	if zp.Document == nil {
		if res.Allowed {
			out.Reason = "the zone has no policy: everything is allowed"
		}
		return out, nil
	}
	out.Rule, out.Line = res.Rule, res.Line
	if res.Missing != nil {
		out.Missing, _ = json.Marshal(res.Missing)
	}
	return out, nil
}

// resolveAddr turns an address or a member's hostname into an address; a
// hostname gives its tunnel address of like's family (IPv4 by default).
func resolveAddr(field, s string, members []policy.Member, like netip.Addr) (netip.Addr, *api.Error) {
	s = strings.Trim(s, "[]")
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), nil
	}
	for _, m := range members {
		if strings.EqualFold(m.Hostname, s) {
			if like.Is6() && !like.Is4In6() && m.IPv6.IsValid() {
				return m.IPv6, nil
			}
			return m.IPv4, nil
		}
	}
	return netip.Addr{}, apiErr(api.CodeNotFound, "%s %q: no member has that hostname, and it is not an address", field, s)
}
