package mesh

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/control/api"
)

// reservePort returns a UDP port free on IPv4 and IPv6: port itself when
// it can be bound, else (when fallback) a random free one.
func reservePort(port uint16, fallback bool) (uint16, error) {
	b := conn.NewStdNetBind()
	_, got, err := b.Open(port)
	if err != nil && port != 0 && fallback {
		_, got, err = b.Open(0)
	}
	if err != nil {
		return 0, fmt.Errorf("listen on UDP port %d: %w", port, err)
	}
	b.Close()
	return got, nil
}

// register sends a registration with the node's key, hostname, zone, child
// prefixes and endpoints.
func (n *Node) register(ctx context.Context, port uint16) (api.RegisterResponse, error) {
	k := n.keys()
	req := api.RegisterRequest{
		PublicKey: k.pub,
		Hostname:  n.cfg.hostname,
		Zone:      n.cfg.zone,
		Endpoints: n.endpointsFor(ctx, port),
		Ephemeral: n.ephemeral(),
	}
	for _, p := range n.wantedPrefixes() {
		req.ChildPrefixes = append(req.ChildPrefixes, p.String())
	}
	resp, err := n.client.Register(ctx, k.priv, req)
	if err == nil {
		n.mu.Lock()
		n.self.endpoints = req.Endpoints
		n.mu.Unlock()
	}
	return resp, err
}

// endpointsFor returns the endpoints to advertise: WithEndpoints, or the
// local address used to reach the service with the listen port.
func (n *Node) endpointsFor(ctx context.Context, port uint16) []netip.AddrPort {
	if len(n.cfg.endpoints) > 0 {
		return slices.Clone(n.cfg.endpoints)
	}
	a, err := n.client.LocalAddrFor(ctx)
	if err != nil {
		n.log.Warn("mesh: no local address towards the service; advertising no endpoint", "err", err)
		return nil
	}
	return []netip.AddrPort{netip.AddrPortFrom(a, port)}
}

func (n *Node) adoptRegistration(r api.RegisterResponse, port uint16) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.self.ipv4.IsValid() && (n.self.ipv4 != r.IPv4 || n.self.ipv6 != r.IPv6) {
		n.log.Error("mesh: the service assigned different addresses than the running ones; restart the node to use them",
			"running", n.self.ipv4, "assigned", r.IPv4)
	} else {
		n.self.ipv4, n.self.ipv6 = r.IPv4, r.IPv6
	}
	n.self.deviceID = r.DeviceID
	n.self.zone = r.Zone
	n.self.hostname = r.Hostname
	if n.self.hostname == "" {
		n.self.hostname = n.cfg.hostname
	}
	n.self.zone4, n.self.zone6 = r.ZoneIPv4, r.ZoneIPv6
	n.setPrefixesLocked(canonPrefixes(r.ChildPrefixes))
	n.saved.URL = n.url
	n.saved.DeviceToken = n.client.DeviceToken()
	n.saved.DeviceTokenExpires = r.DeviceTokenExpiresAt
	if _, fp, err := api.ParseJoinToken(n.cfg.token); err == nil && fp != nil {
		n.saved.Fingerprint = fp
	}
	n.saved.ListenPort = port
}

// adoptSavedPeers starts a node that registered again from the peers and
// revision saved by its previous run, when s is for the same device in the
// same zone, so that they stay on disk and on the device until the watch
// delivers a snapshot. It reports whether it did.
func (n *Node) adoptSavedPeers(s *savedState) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s == nil || s.Zone != n.self.zone || s.DeviceID != n.self.deviceID || s.IPv4 != n.self.ipv4 {
		return false
	}
	n.peers = peerMap(s.Peers, n.keys().pub)
	n.revision = s.Revision
	n.filter = s.Filter
	return true
}

func (n *Node) adoptSaved(s *savedState, port uint16) {
	n.client.SetDeviceToken(s.DeviceToken)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.self = selfInfo{
		deviceID:  s.DeviceID,
		hostname:  s.Hostname,
		zone:      s.Zone,
		ipv4:      s.IPv4,
		ipv6:      s.IPv6,
		zone4:     s.ZoneIPv4,
		zone6:     s.ZoneIPv6,
		prefixes:  canonPrefixes(append(slices.Clone(s.ChildPrefixes), n.wantPrefixes...)),
		endpoints: s.Endpoints,
	}
	n.peers = peerMap(s.Peers, n.keys().pub)
	n.revision = s.Revision
	n.filter = s.Filter
	n.saved = *s
	n.saved.ListenPort = port
}

// resumeWithDeviceToken restarts from the saved registration when the
// join token is refused but the saved device token is still valid, and
// updates the node's endpoints and hostname at the service.
func (n *Node) resumeWithDeviceToken(ctx context.Context, s *savedState, port uint16) error {
	n.client.SetDeviceToken(s.DeviceToken)
	d, err := n.client.Self(ctx)
	if err != nil {
		return err
	}
	eps := n.endpointsFor(ctx, port)
	req := api.UpdateSelfRequest{Hostname: &n.cfg.hostname, Endpoints: &eps}
	for _, p := range n.wantedPrefixes() {
		req.AddChildPrefixes = append(req.AddChildPrefixes, p.String())
	}
	if d, err = n.client.UpdateSelf(ctx, req); err != nil {
		return err
	}
	n.adoptSaved(s, port)
	n.mu.Lock()
	n.self.deviceID, n.self.hostname = d.ID, d.Hostname
	n.self.ipv4, n.self.ipv6 = d.IPv4, d.IPv6
	n.setPrefixesLocked(canonPrefixes(d.ChildPrefixes))
	n.self.endpoints = d.Endpoints
	n.mu.Unlock()
	return nil
}

// saveState writes the node's registration, peers and revision to the
// state directory (no-op without one). Concurrent calls write in order:
// the file ends with the latest snapshot.
func (n *Node) saveState() error {
	n.saveMu.Lock()
	defer n.saveMu.Unlock()
	n.mu.Lock()
	s := n.saved
	s.URL = n.url
	s.DeviceID = n.self.deviceID
	s.Zone = n.self.zone
	s.Hostname = n.self.hostname
	s.IPv4, s.IPv6 = n.self.ipv4, n.self.ipv6
	s.ZoneIPv4, s.ZoneIPv6 = n.self.zone4, n.self.zone6
	s.ChildPrefixes = slices.Clone(n.self.prefixes)
	s.Endpoints = slices.Clone(n.self.endpoints)
	if tok := n.client.DeviceToken(); tok != "" {
		s.DeviceToken = tok
	}
	s.Peers = make([]api.Peer, 0, len(n.peers))
	for _, k := range sortedPeerKeys(n.peers) {
		s.Peers = append(s.Peers, n.peers[k])
	}
	s.Revision = n.revision
	s.Filter = n.filter
	n.mu.Unlock()
	return n.state.save(&s)
}
