package control

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestPatchSelfCandidates(t *testing.T) {
	e := newEnv(t)
	_, r := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	cands := []api.Candidate{
		{Addr: netip.MustParseAddrPort("10.0.0.2:51820"), Type: api.CandidateLocal},
		{Addr: netip.MustParseAddrPort("198.51.100.7:40000"), Type: api.CandidateReflexive},
	}
	nat := api.NATSymmetric
	var d api.Device
	code, ae := e.call("PATCH", "/v1/devices/self", r.DeviceToken, api.UpdateSelfRequest{Candidates: &cands, NAT: &nat}, &d)
	require.Nil(t, ae)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, cands, d.Candidates)
	require.Equal(t, api.NATSymmetric, d.NAT)
	require.Equal(t, []netip.AddrPort{cands[0].Addr, cands[1].Addr}, d.Endpoints, "endpoints follow the candidates")

	before := e.state()
	for name, tt := range map[string]struct{ body, code string }{
		"unknown type":   {`{"candidates":[{"addr":"10.0.0.3:1","type":"teleport"}]}`, api.CodeBadRequest},
		"zero port":      {`{"candidates":[{"addr":"10.0.0.3:0","type":"local"}]}`, api.CodeInvalidEndpoint},
		"unspecified":    {`{"candidates":[{"addr":"0.0.0.0:1","type":"local"}]}`, api.CodeInvalidEndpoint},
		"unknown nat":    {`{"nat":"cone-ish"}`, api.CodeBadRequest},
		"not an address": {`{"candidates":[{"addr":"host:1","type":"local"}]}`, api.CodeBadRequest},
	} {
		t.Run(name, func(t *testing.T) {
			code, b := e.do("PATCH", "/v1/devices/self", r.DeviceToken, tt.body)
			require.Equal(t, http.StatusBadRequest, code, "%s", b)
			require.Contains(t, string(b), `"code":"`+tt.code+`"`)
		})
	}
	require.Equal(t, before, e.state(), "refused updates change nothing")
}
