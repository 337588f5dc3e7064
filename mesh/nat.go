package mesh

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// Path names reported in PeerStatus.Path.
const (
	// PathDirect: the peer's packets go straight to one of its addresses,
	// found by probing (hole punching when both are behind NATs).
	PathDirect = magicsock.PathDirect
	// PathRelay: they go through the coordination service's relay, since
	// no direct path works (symmetric NATs, UDP blocked).
	PathRelay = magicsock.PathRelay
)

// bindConfig configures the node's WireGuard transport, a magicsock.Conn
// that finds a path to every peer through NATs (see package magicsock).
// Its hooks reach the service through the node's client: the STUN
// responders from /v1/info, the relay, and the candidates it learns.
func (n *Node) bindConfig() magicsock.Config {
	var towardService netip.Addr
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	if a, err := n.client.LocalAddrFor(ctx); err == nil {
		towardService = a
	}
	cancel()
	return magicsock.Config{
		PrivateKey: n.keys().priv,
		Logger:     n.log,
		FindSTUN:   n.client.STUNServers,
		DialRelay:  n.client.DialRelay,
		Publish:    n.publishCandidates,
		Manual:     n.cfg.endpoints,
		LocalAddrs: func() []netip.Addr {
			as := magicsock.InterfaceAddrs()
			if towardService.IsValid() && !slices.Contains(as, towardService) {
				as = append([]netip.Addr{towardService}, as...)
			}
			return as
		},
		SkipLocal: n.ownsAddr,
	}
}

// publishCandidates tells the service where the node can be reached.
func (n *Node) publishCandidates(ctx context.Context, cands []api.Candidate, nat api.NATType) error {
	d, err := n.client.UpdateSelf(ctx, api.UpdateSelfRequest{Candidates: &cands, NAT: &nat})
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.self.endpoints = slices.Clone(d.Endpoints)
	n.mu.Unlock()
	n.log.Debug("mesh: advertised candidates", "candidates", cands, "nat", nat)
	return nil
}

// ownsAddr reports addresses that are the node's own in the mesh (tunnel
// addresses, zone pools, child prefixes): never advertised as places to
// send WireGuard to, as packets to them would enter the tunnel itself.
func (n *Node) ownsAddr(a netip.Addr) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.self.zone4.Contains(a) || n.self.zone6.Contains(a) {
		return true
	}
	for _, p := range n.self.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// magicPeers turns the device's peers into what the Conn probes: each
// peer's candidates (its endpoints, as manual ones, from a member that
// does not type them), minus addresses any peer routes through the tunnel
// (probing those would loop through WireGuard itself).
func magicPeers(want map[api.Key]wgPeer) []magicsock.PeerInfo {
	inTunnel := func(a netip.Addr) bool {
		for _, w := range want {
			for _, p := range w.AllowedIPs {
				if p.Contains(a) {
					return true
				}
			}
		}
		return false
	}
	out := make([]magicsock.PeerInfo, 0, len(want))
	for _, k := range sortedKeys(want) {
		w := want[k]
		pi := magicsock.PeerInfo{Key: k, Name: w.Name}
		for _, c := range w.Candidates {
			if !inTunnel(c.Addr.Addr()) {
				pi.Candidates = append(pi.Candidates, c)
			}
		}
		out = append(out, pi)
	}
	return out
}

// peerCandidates returns p's typed candidates, or its endpoints as manual
// ones.
func peerCandidates(p api.Peer) []api.Candidate {
	if len(p.Candidates) > 0 {
		return slices.Clone(p.Candidates)
	}
	out := make([]api.Candidate, 0, len(p.Endpoints))
	for _, e := range p.Endpoints {
		out = append(out, api.Candidate{Addr: e, Type: api.CandidateManual})
	}
	return out
}

// uapiEndpoint is the UAPI endpoint of a peer: the Conn's Endpoint for
// its key, which sends through whatever path the Conn chose.
func uapiEndpoint(w wgPeer) string { return magicsock.EndpointString(w.PublicKey) }
