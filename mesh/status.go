package mesh

import (
	"net/netip"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// Peer is another member of the zone, as the service describes it.
type Peer struct {
	ID        string
	Hostname  string
	PublicKey api.Key
	// Addrs are the peer's tunnel addresses (IPv4, then IPv6).
	Addrs []netip.Addr
	// Prefixes are the child prefixes routed to the peer.
	Prefixes []netip.Prefix
	// Endpoints are the UDP addresses the peer advertises.
	Endpoints []netip.AddrPort
	// Online reports whether the peer holds a connection to the service,
	// as the service last said (false from services that do not track
	// it); LastSeen is when it last did (zero: unknown).
	Online   bool
	LastSeen time.Time
}

func publicPeer(p api.Peer) Peer {
	out := Peer{
		ID:        p.ID,
		Hostname:  p.Hostname,
		PublicKey: p.PublicKey,
		Prefixes:  canonPrefixes(p.ChildPrefixes),
		Endpoints: slices.Clone(p.Endpoints),
		LastSeen:  p.LastSeen,
	}
	if p.Online != nil {
		out.Online = *p.Online
	}
	if p.IPv4.IsValid() {
		out.Addrs = append(out.Addrs, p.IPv4)
	}
	if p.IPv6.IsValid() {
		out.Addrs = append(out.Addrs, p.IPv6)
	}
	return out
}

// Status is a snapshot of a node's state.
type Status struct {
	Self  SelfStatus
	Peers []PeerStatus // sorted by hostname
	// ControlConnected reports whether the node is in sync with the service
	// right now.
	ControlConnected bool
	// Revision is the last zone revision applied.
	Revision int64
	// EventsDropped counts events Watch readers were too slow to take.
	EventsDropped uint64
	// SkippedRoutes lists, in kernel mode, the peers' prefixes that are
	// not routed through the TUN device and why (a prefix overlapping a
	// network directly connected on this host). Dial and Ping refuse them.
	SkippedRoutes []SkippedRoute
	// Filter is the inbound filter the node enforces and its counters.
	Filter FilterStatus
}

// SelfStatus describes the node itself.
type SelfStatus struct {
	DeviceID   string
	Hostname   string
	Zone       string
	PublicKey  api.Key
	Addrs      []netip.Addr
	Prefixes   []netip.Prefix
	ZoneIPv4   netip.Prefix
	ZoneIPv6   netip.Prefix
	ListenPort uint16
	Endpoints  []netip.AddrPort
	Mode       Mode
	// Interface is the TUN device in kernel mode; "" in userspace mode.
	Interface string
	// NAT is what the node learned about the NAT in front of it.
	NAT api.NATType
	// Relay reports whether the node is connected to the service's relay
	// (it is while some peer has no direct path).
	Relay bool
	// Ephemeral: the service deletes the device once it stays offline,
	// and Close deletes it at once (see WithEphemeral).
	Ephemeral bool
}

// PeerStatus is a peer with its WireGuard state.
type PeerStatus struct {
	// DeviceID is the peer's id at the service.
	DeviceID  string
	Hostname  string
	PublicKey api.Key
	Addrs     []netip.Addr
	Prefixes  []netip.Prefix
	// Path is how the peer's packets travel: PathDirect, PathRelay, or ""
	// while no path is known yet.
	Path string
	// Endpoint is the peer's address in use on a direct path (zero on the
	// relay or while no path is known).
	Endpoint netip.AddrPort
	// Online reports whether the peer holds a connection to the service,
	// as the service last said; LastSeen is when it last did. A peer that
	// is online may still be unreachable: LastHandshake says whether the
	// tunnel to it works.
	Online   bool
	LastSeen time.Time
	// LastHandshake is the time of the last completed handshake; zero if
	// none yet.
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// Status returns the node's state: itself, and each peer with the
// WireGuard device's view of it.
func (n *Node) Status() Status {
	ps := n.plane.status() // after Close or on error: peers without runtime stats
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{
		Self: SelfStatus{
			DeviceID:   n.self.deviceID,
			Hostname:   n.self.hostname,
			Zone:       n.self.zone,
			PublicKey:  n.keys().pub,
			Addrs:      []netip.Addr{n.self.ipv4},
			Prefixes:   slices.Clone(n.self.prefixes),
			ZoneIPv4:   n.self.zone4,
			ZoneIPv6:   n.self.zone6,
			ListenPort: n.port,
			Endpoints:  slices.Clone(n.self.endpoints),
			Mode:       n.cfg.mode,
			Interface:  ps.ifname,
			NAT:        ps.reach.NAT,
			Relay:      ps.reach.Relay,
			Ephemeral:  n.ephemeral(),
		},
		SkippedRoutes:    ps.skipped,
		ControlConnected: n.connected,
		Revision:         n.revision,
		EventsDropped:    n.events.dropped.Load(),
		Filter:           filterStatus(n.filter, ps.filter),
	}
	if n.self.ipv6.IsValid() {
		st.Self.Addrs = append(st.Self.Addrs, n.self.ipv6)
	}
	for _, k := range sortedPeerKeys(n.peers) {
		p := publicPeer(n.peers[k])
		pst := PeerStatus{DeviceID: p.ID, Hostname: p.Hostname, PublicKey: k, Addrs: p.Addrs, Prefixes: p.Prefixes,
			Online: p.Online, LastSeen: p.LastSeen}
		if s, ok := ps.peers[k]; ok {
			pst.Endpoint, pst.Path = s.endpoint, s.path
			pst.LastHandshake = s.lastHandshake
			pst.RxBytes, pst.TxBytes = s.rxBytes, s.txBytes
		}
		st.Peers = append(st.Peers, pst)
	}
	return st
}
