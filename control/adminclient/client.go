// Package adminclient is a small client of the wiremesh admin API (zones,
// join tokens, devices, prefixes), used by the `wiremesh` CLI. It trusts the
// service by certificate pinning, a CA pool, or the system roots.
package adminclient

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// Options configures a Client.
type Options struct {
	// AdminToken is sent as the bearer credential.
	AdminToken string
	// Fingerprint pins the service certificate (SHA-256 of the leaf DER);
	// the certificate chain and name are then not checked. Nil means
	// RootCAs (or the system roots) and the usual hostname check.
	Fingerprint []byte
	// RootCAs trusts these CAs instead of the system roots.
	RootCAs *x509.CertPool
	// Timeout bounds each call. Zero means 30s.
	Timeout time.Duration
}

// Client calls the admin API of one service.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// New returns a client of the service at baseURL ("https://host:port").
func New(baseURL string, o Options) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("service URL %q: want http(s)://host:port", baseURL)
	}
	if err := tlspin.Check(o.Fingerprint); err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = tlspin.ClientConfig(o.Fingerprint, o.RootCAs)
	return &Client{base: u, token: o.AdminToken, hc: &http.Client{Transport: tr, Timeout: o.Timeout}}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// do calls the API. in (if non-nil) is sent as JSON ([]byte: as is), out (if non-nil)
// receives the JSON answer. Non-2xx answers are returned as *api.Error with
// Status set.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	u := *c.base
	u.Path += path
	u.RawQuery = query.Encode()
	var body io.Reader
	if raw, ok := in.([]byte); ok {
		body = bytes.NewReader(raw) // a document sent as is (a policy)
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &api.Error{}
		if json.Unmarshal(b, e) != nil || e.Code == "" {
			e = &api.Error{Code: api.CodeInternal, Message: fmt.Sprintf("HTTP %s: %s", resp.Status, strings.TrimSpace(string(b)))}
		}
		e.Status = resp.StatusCode
		return e
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}

// Info returns the service's public information (no credentials needed).
func (c *Client) Info(ctx context.Context) (api.Info, error) {
	var out api.Info
	return out, c.do(ctx, "GET", "/v1/info", nil, nil, &out)
}

// CreateZone creates a zone.
func (c *Client) CreateZone(ctx context.Context, req api.CreateZoneRequest) (api.Zone, error) {
	var out api.Zone
	return out, c.do(ctx, "POST", "/v1/zones", nil, req, &out)
}

// Zones lists the zones.
func (c *Client) Zones(ctx context.Context) ([]api.Zone, error) {
	var out []api.Zone
	return out, c.do(ctx, "GET", "/v1/zones", nil, nil, &out)
}

// Zone returns one zone.
func (c *Client) Zone(ctx context.Context, name string) (api.Zone, error) {
	var out api.Zone
	return out, c.do(ctx, "GET", "/v1/zones/"+url.PathEscape(name), nil, nil, &out)
}

// CreateToken creates a join token; the answer's Token is the secret.
func (c *Client) CreateToken(ctx context.Context, req api.CreateTokenRequest) (api.JoinToken, error) {
	var out api.JoinToken
	return out, c.do(ctx, "POST", "/v1/tokens", nil, req, &out)
}

// Tokens lists join tokens ("" = all zones).
func (c *Client) Tokens(ctx context.Context, zone string) ([]api.JoinToken, error) {
	var out []api.JoinToken
	return out, c.do(ctx, "GET", "/v1/tokens", zoneQuery(zone), nil, &out)
}

// DeleteToken deletes a join token by id.
func (c *Client) DeleteToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/tokens/"+url.PathEscape(id), nil, nil, nil)
}

// Devices lists devices ("" = all zones).
func (c *Client) Devices(ctx context.Context, zone string) ([]api.Device, error) {
	var out []api.Device
	return out, c.do(ctx, "GET", "/v1/devices", zoneQuery(zone), nil, &out)
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (api.Device, error) {
	var out api.Device
	return out, c.do(ctx, "GET", "/v1/devices/"+url.PathEscape(id), nil, nil, &out)
}

// DeleteDevice deletes a device; its prefixes become free.
func (c *Client) DeleteDevice(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/devices/"+url.PathEscape(id), nil, nil, nil)
}

// Prefixes lists allocated child prefixes ("" = all zones).
func (c *Client) Prefixes(ctx context.Context, zone string) ([]api.PrefixEntry, error) {
	var out []api.PrefixEntry
	return out, c.do(ctx, "GET", "/v1/prefixes", zoneQuery(zone), nil, &out)
}

// ReleasePrefix frees a child prefix of zone, whoever holds it.
func (c *Client) ReleasePrefix(ctx context.Context, zone string, p netip.Prefix) error {
	return c.do(ctx, "DELETE", "/v1/zones/"+url.PathEscape(zone)+"/prefixes/"+p.String(), nil, nil, nil)
}

func zoneQuery(zone string) url.Values {
	if zone == "" {
		return nil
	}
	return url.Values{"zone": {zone}}
}
