package controlclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/wiremesh/wiremesh/control/api"
)

// DeleteSelf sends DELETE /v1/devices/self (device token): the device
// leaves the zone for good. Retried like the idempotent calls; a retry of
// a delete that took effect answers unauthorized (the token is gone).
func (c *Client) DeleteSelf(ctx context.Context) error {
	return c.deviceCall(ctx, "delete self", http.MethodDelete, "/v1/devices/self", nil, nil)
}

// RotateToken sends POST /v1/devices/self/token and, on success, uses the
// new device token from then on. It is not retried: a lost answer would
// leave the client with a token the service no longer accepts.
func (c *Client) RotateToken(ctx context.Context) (api.RotateTokenResponse, error) {
	var out api.RotateTokenResponse
	if err := c.onceDeviceCall(ctx, "rotate token", "/v1/devices/self/token", nil, &out); err != nil {
		return out, err
	}
	if out.DeviceToken == "" {
		return out, fmt.Errorf("controlclient: rotate token: service response carries no device token")
	}
	c.SetDeviceToken(out.DeviceToken)
	return out, nil
}

// RotateKey signs a key rotation of device deviceID from oldPrivate to
// newPrivate (fetching Info when not cached) and sends POST
// /v1/devices/self/key once. When the answer is lost (an error that is not
// an *api.Error), the rotation may have taken effect: the caller checks
// with Self.
func (c *Client) RotateKey(ctx context.Context, deviceID string, oldPrivate, newPrivate api.Key) (api.Device, error) {
	c.mu.Lock()
	info := c.mu.info
	c.mu.Unlock()
	if info == nil {
		i, err := c.Info(ctx)
		if err != nil {
			return api.Device{}, err
		}
		info = &i
	}
	req := api.RotateKeyRequest{Timestamp: c.nextTimestamp(), Nonce: newNonce()}
	if err := req.Sign(deviceID, oldPrivate, newPrivate, info.PublicKey); err != nil {
		return api.Device{}, fmt.Errorf("controlclient: rotate key: sign: %w", err)
	}
	var d api.Device
	err := c.onceDeviceCall(ctx, "rotate key", "/v1/devices/self/key", &req, &d)
	return d, err
}

// onceDeviceCall POSTs in (JSON, may be nil) with the device token, in a
// single attempt, and decodes a 2xx answer into out.
func (c *Client) onceDeviceCall(ctx context.Context, op, path string, in, out any) error {
	fail := func(err error) error { return fmt.Errorf("controlclient: %s: %w", op, err) }
	tok := c.DeviceToken()
	if tok == "" {
		return fail(ErrNoDeviceToken)
	}
	ctx, cancel, err := c.opCtx(ctx)
	if err != nil {
		return fail(err)
	}
	defer cancel(nil)
	var body []byte
	if in != nil {
		if body, err = json.Marshal(in); err != nil {
			return fail(err)
		}
	}
	req, err := c.newRequest(ctx, http.MethodPost, path, tok, body)
	if err != nil {
		return fail(err)
	}
	resp, err := c.once.Do(req)
	if err != nil {
		return fail(c.causeOr(ctx, err))
	}
	defer drainClose(resp)
	if err := decodeResponse(resp, out); err != nil {
		return fail(err)
	}
	return nil
}
