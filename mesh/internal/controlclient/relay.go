package controlclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/coder/websocket"

	"github.com/wiremesh/wiremesh/control/api"
)

// DialRelay opens the service's relay (a WebSocket at api.RelayPath)
// with the device token, over the client's transport (so the pinned
// certificate applies). The caller owns the connection.
func (c *Client) DialRelay(ctx context.Context) (*websocket.Conn, error) {
	tok := c.DeviceToken()
	if tok == "" {
		return nil, errors.New("controlclient: relay: no device token (register first)")
	}
	h := http.Header{}
	c.setHeaders(h, tok)
	ws, resp, err := websocket.Dial(ctx, c.base+api.RelayPath, &websocket.DialOptions{HTTPClient: c.stream, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, fmt.Errorf("controlclient: relay: HTTP %d: %w", resp.StatusCode, err)
		}
		return nil, fmt.Errorf("controlclient: relay: %w", err)
	}
	return ws, nil
}

// STUNServers returns the service's STUN responders from Info (fetched
// when not cached): an address without a host means the service URL's
// host, which is resolved.
func (c *Client) STUNServers(ctx context.Context) ([]netip.AddrPort, error) {
	c.mu.Lock()
	info := c.mu.info
	c.mu.Unlock()
	if info == nil {
		i, err := c.Info(ctx)
		if err != nil {
			return nil, err
		}
		info = &i
	}
	u, err := url.Parse(c.base)
	if err != nil {
		return nil, fmt.Errorf("controlclient: STUN servers: %w", err)
	}
	var out []netip.AddrPort
	for _, s := range []string{info.STUNAddr, info.STUNAltAddr} {
		if s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return nil, fmt.Errorf("controlclient: STUN address %q: %w", s, err)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("controlclient: STUN address %q: bad port", s)
		}
		if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
			out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(p)))
			continue
		}
		if _, err := netip.ParseAddr(host); host == "" || err == nil {
			host = u.Hostname() // no host, or an unspecified address
		}
		addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("controlclient: STUN host %q: %w", host, err)
		}
		out = append(out, netip.AddrPortFrom(addrs[0].Unmap(), uint16(p)))
	}
	return out, nil
}

// ProbeRelay checks that the service's relay can be reached. With a
// device token it opens the relay's WebSocket and closes it again
// (authenticated is true). Without one it sends the same upgrade request
// unauthenticated: a 401 with the service's error body proves the request
// reached the relay's handler through every proxy on the way (the upgrade
// itself is not tried); authenticated is false. Any other outcome is an
// error.
func (c *Client) ProbeRelay(ctx context.Context) (authenticated bool, err error) {
	if c.DeviceToken() != "" {
		ws, err := c.DialRelay(ctx)
		if err != nil {
			return false, err
		}
		ws.Close(websocket.StatusNormalClosure, "probe")
		return true, nil
	}
	h := http.Header{}
	c.setHeaders(h, "")
	ws, resp, err := websocket.Dial(ctx, c.base+api.RelayPath, &websocket.DialOptions{HTTPClient: c.stream, HTTPHeader: h})
	if err == nil {
		ws.Close(websocket.StatusNormalClosure, "probe")
		return false, errors.New("controlclient: relay: accepted a connection without a device token")
	}
	if resp == nil {
		return false, fmt.Errorf("controlclient: relay: %w", err)
	}
	if resp.StatusCode != http.StatusUnauthorized {
		return false, fmt.Errorf("controlclient: relay: HTTP %d: %w", resp.StatusCode, err)
	}
	return false, nil
}
