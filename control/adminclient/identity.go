package adminclient

import (
	"context"
	"net/url"
)

// RevokeDevice deletes a device, freeing its prefixes, and refuses its key
// from then on: registering with it again gives 401 revoked, whatever the
// join token.
func (c *Client) RevokeDevice(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/devices/"+url.PathEscape(id), url.Values{"revoke": {"true"}}, nil, nil)
}
