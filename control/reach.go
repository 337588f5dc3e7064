package control

import (
	"net/netip"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// reachUpdate checks the typed candidates and NAT kind of a PATCH self
// and adds them to p. Candidates without Endpoints replace the endpoint
// list too, with the candidates' addresses, so members that only read
// Endpoints keep working.
func reachUpdate(req api.UpdateSelfRequest, p *store.UpdateParams) *api.Error {
	if req.Candidates != nil {
		cs := *req.Candidates
		if len(cs) > maxEndpointsPerRequest {
			return apiErr(api.CodeBadRequest, "too many candidates: %d (max %d)", len(cs), maxEndpointsPerRequest)
		}
		addrs := make([]netip.AddrPort, 0, len(cs))
		for _, c := range cs {
			if !c.Type.Valid() {
				return apiErr(api.CodeBadRequest, "candidate %s has unknown type %q", c.Addr, c.Type)
			}
			addrs = append(addrs, c.Addr)
		}
		if aerr := checkEndpoints(addrs); aerr != nil {
			return aerr
		}
		cands := make([]store.Candidate, len(cs))
		for i, c := range cs {
			cands[i] = store.Candidate{Addr: c.Addr, Type: string(c.Type)}
		}
		p.Candidates = &cands
		if req.Endpoints == nil {
			eps := nonNil(api.CandidateAddrs(cs))
			p.Endpoints = &eps
		}
	}
	if req.NAT != nil {
		if !req.NAT.Valid() {
			return apiErr(api.CodeBadRequest, "unknown NAT type %q", *req.NAT)
		}
		nat := string(*req.NAT)
		p.NAT = &nat
	}
	return nil
}

func toAPICandidates(cs []store.Candidate) []api.Candidate {
	if len(cs) == 0 {
		return nil
	}
	out := make([]api.Candidate, len(cs))
	for i, c := range cs {
		out[i] = api.Candidate{Addr: c.Addr, Type: api.CandidateType(c.Type)}
	}
	return out
}
