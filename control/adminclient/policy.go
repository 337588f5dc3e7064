package adminclient

import (
	"context"
	"net/url"

	"github.com/wiremesh/wiremesh/control/api"
)

func policyPath(zone string) string { return "/v1/zones/" + url.PathEscape(zone) + "/policy" }

// Policy returns a zone's access policy (Policy null: none, everything allowed).
func (c *Client) Policy(ctx context.Context, zone string) (api.ZonePolicy, error) {
	var out api.ZonePolicy
	return out, c.do(ctx, "GET", policyPath(zone), nil, nil, &out)
}

// SetPolicy replaces a zone's policy with doc, sent byte for byte so that
// the line of a refusal (*api.Error with Line set) is the line in doc.
func (c *Client) SetPolicy(ctx context.Context, zone string, doc []byte) (api.ZonePolicy, error) {
	var out api.ZonePolicy
	return out, c.do(ctx, "PUT", policyPath(zone), nil, doc, &out)
}

// DeletePolicy removes a zone's policy: the zone allows everything again.
func (c *Client) DeletePolicy(ctx context.Context, zone string) (api.ZonePolicy, error) {
	var out api.ZonePolicy
	return out, c.do(ctx, "DELETE", policyPath(zone), nil, nil, &out)
}

// CheckPolicy asks whether a flow is allowed in a zone.
func (c *Client) CheckPolicy(ctx context.Context, zone string, req api.PolicyCheckRequest) (api.PolicyCheck, error) {
	var out api.PolicyCheck
	return out, c.do(ctx, "POST", policyPath(zone)+"/check", nil, req, &out)
}
