package mesh

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// wgPeer is the configuration of one WireGuard peer as we want it.
type wgPeer struct {
	PublicKey  api.Key
	Endpoint   netip.AddrPort // zero: none known, the peer must initiate
	AllowedIPs []netip.Prefix // canonical, sorted, deduplicated
	Keepalive  uint16         // seconds, 0 = off
	// Hold asks the device to wait for the peer to initiate the first
	// handshake (see holdDelay). It is not part of the UAPI configuration.
	Hold bool
	// Name and Candidates are for the bind's path finding (nat.go), not
	// part of the UAPI configuration either.
	Name       string
	Candidates []api.Candidate
	// Generation is the peer's registration count (api.Peer.Generation),
	// 0 when unknown. When it changes, the peer restarted: the device
	// replaces the peer instead of updating it (see restartRetries).
	Generation uint64
}

// restarted reports whether want is a new start of the peer configured as
// have: both generations are known and differ.
func restarted(have, want wgPeer) bool {
	return have.Generation != 0 && want.Generation != 0 && have.Generation != want.Generation
}

// shouldHold reports whether a node should let a newly seen peer initiate
// the first handshake: when the peer appeared through a live change (it
// just joined, so it has this node in its snapshot and initiates itself)
// and both sides advertise endpoints. Peers from a snapshot or saved state
// are not held: the node itself is the newcomer (or restarted, and its
// peers may hold a stale session only its own handshake replaces).
func shouldHold(live, advertises bool, peer wgPeer) bool {
	return live && advertises && peer.Endpoint.IsValid()
}

func (p wgPeer) equalAllowedIPs(q wgPeer) bool {
	return slices.Equal(p.AllowedIPs, q.AllowedIPs)
}

// peerConfig turns a peer from the service into its WireGuard configuration:
// its tunnel addresses and child prefixes as allowed IPs, its first endpoint,
// and a persistent keepalive when it has an endpoint. ok is false for a peer
// that cannot be configured (no key, no address).
func peerConfig(p api.Peer) (wgPeer, bool) {
	if p.PublicKey.IsZero() {
		return wgPeer{}, false
	}
	w := wgPeer{PublicKey: p.PublicKey, Generation: p.Generation, Name: p.Hostname, Candidates: peerCandidates(p)}
	if p.IPv4.IsValid() {
		w.AllowedIPs = append(w.AllowedIPs, netip.PrefixFrom(p.IPv4.Unmap(), 32))
	}
	if p.IPv6.IsValid() && p.IPv6.Is6() && !p.IPv6.Is4In6() {
		w.AllowedIPs = append(w.AllowedIPs, netip.PrefixFrom(p.IPv6, 128))
	}
	if len(w.AllowedIPs) == 0 {
		return wgPeer{}, false
	}
	for _, cp := range p.ChildPrefixes {
		if cp.IsValid() {
			w.AllowedIPs = append(w.AllowedIPs, cp.Masked())
		}
	}
	slices.SortFunc(w.AllowedIPs, comparePrefix)
	w.AllowedIPs = slices.Compact(w.AllowedIPs)
	for _, ep := range p.Endpoints {
		if ep.IsValid() && ep.Port() != 0 && !ep.Addr().IsUnspecified() {
			w.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
			w.Keepalive = uint16(PersistentKeepalive.Seconds())
			break
		}
	}
	return w, true
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// diffPeers returns the UAPI "set" text that turns the device from have
// into want, touching only what changed: new peers are added, gone peers
// removed (remove=true), a changed peer gets update_only=true plus only the
// fields that differ (replace_allowed_ips=true with the full list when its
// allowed IPs changed). Unchanged peers do not appear, so their handshake
// and session are kept. Removals come first so that prefixes moving from
// one peer to another end up with the new owner. "" means nothing to do.
func diffPeers(have, want map[api.Key]wgPeer) string {
	var b strings.Builder
	keyLine := func(k api.Key) {
		b.WriteString("public_key=" + hex.EncodeToString(k[:]) + "\n")
	}
	for _, k := range sortedKeys(have) {
		if _, ok := want[k]; !ok {
			keyLine(k)
			b.WriteString("remove=true\n")
		}
	}
	for _, k := range sortedKeys(want) {
		w := want[k]
		h, exists := have[k]
		if !exists {
			keyLine(k)
			if w.Endpoint.IsValid() {
				fmt.Fprintf(&b, "endpoint=%s\n", uapiEndpoint(w))
			}
			b.WriteString("replace_allowed_ips=true\n")
			for _, p := range w.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", p)
			}
			// Last: turning keepalive on sends one at once, which needs the
			// endpoint set before.
			if w.Keepalive != 0 {
				fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", w.Keepalive)
			}
			continue
		}
		epChanged := w.Endpoint != h.Endpoint && w.Endpoint.IsValid()
		ipsChanged := !w.equalAllowedIPs(h)
		kaChanged := w.Keepalive != h.Keepalive
		if !epChanged && !ipsChanged && !kaChanged {
			continue
		}
		keyLine(k)
		b.WriteString("update_only=true\n")
		if epChanged {
			fmt.Fprintf(&b, "endpoint=%s\n", uapiEndpoint(w))
		}
		if ipsChanged {
			b.WriteString("replace_allowed_ips=true\n")
			for _, p := range w.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", p)
			}
		}
		if kaChanged {
			fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", w.Keepalive)
		}
	}
	return b.String()
}

func sortedKeys(m map[api.Key]wgPeer) []api.Key {
	ks := make([]api.Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b api.Key) int { return strings.Compare(string(a[:]), string(b[:])) })
	return ks
}
