// Package mesh is the wiremesh agent: it joins a program or a host to a
// WireGuard mesh coordinated by the wiremesh service (package control).
//
// # Joining
//
// [Join] registers the node with the service (proving it holds its private
// key), brings up its WireGuard device, applies the zone's peer list and
// keeps it current from the service's watch stream:
//
//	n, err := mesh.Join(ctx, "https://mesh.example.com:8443",
//		mesh.WithToken(token),              // from `wiremesh token create`
//		mesh.WithStateDir("/var/lib/myapp")) // keep identity and addresses
//	if err != nil {
//		return err
//	}
//	defer n.Close()
//
// # Userspace mode
//
// The default mode needs no root, no TUN device and no open inbound port: a
// gVisor TCP/IP stack inside the process carries the node's tunnel addresses,
// and the program reaches the mesh through [Node.Dial], [Node.Listen],
// [Node.ListenPacket], [Node.Ping] and [Node.HTTPClient]. Destinations must
// be members' tunnel addresses or inside a member's child prefixes; anything
// else (a tunnel address no member holds included) fails at once with
// [ErrNoRoute] — there is never a fallback to the host network.
//
// # Kernel mode
//
// WithMode(Kernel) (Linux, root) makes the node a host-level member: a TUN
// device (WithInterfaceName, default "wg0") driven by wireguard-go carries
// the tunnel addresses, the zone's pools and every peer's child prefixes
// are routed through it and kept in step as peers come, change and go, and
// a node with child prefixes turns on IP forwarding and installs nftables
// rules accepting only mesh <-> child-prefix traffic (WithMasquerade adds
// source NAT). A peer prefix overlapping a network directly connected on
// the host is not routed; [Status].SkippedRoutes and the log say why.
// Node.Dial, Listen and Ping then use the host network stack, with the same
// refusal of destinations outside the mesh. Close removes the interface and
// every route and rule the node added; a node started after a crash removes
// the leftovers of its own first.
//
// # Behind NAT
//
// Members need no open port and no configuration to reach each other
// through NATs. A node learns its public address with STUN sent from its
// WireGuard socket (the service answers on two ports, which also tells a
// symmetric NAT apart), tells the service its candidates (local, manual
// from [WithEndpoints], reflexive), and probes every peer's candidates
// with authenticated pings while the peer probes back, so both NATs open
// (hole punching). Where no direct path works (symmetric NATs on both
// sides, UDP blocked) the pair's WireGuard datagrams go through the
// service's relay over its HTTPS port; probing goes on, and the pair moves
// to a direct path when one opens. [PeerStatus].Path says which is in use
// ([PathDirect], [PathRelay]), and the log has one line per change.
//
// # When the service goes away
//
// The data plane keeps working with the last known peers. The node
// reconnects with bounded exponential backoff and resumes the watch from
// its last revision ([ControlLost] and [ControlRestored] events). With
// [WithStateDir], a node restarted while the service is down starts from its
// saved addresses and peers and registers again in the background.
//
// # Errors
//
// Refusals from the service come back as *api.Error (errors.As) and match
// [ErrUnauthorized], [ErrPrefixConflict] and [ErrInvalidPrefix] (errors.Is).
// [Node.Dial] refuses a destination outside the mesh with a [*NoRouteError]
// ([ErrNoRoute]) and a hostname that several members hold with an
// [*AmbiguousNameError] ([ErrAmbiguousName]).
//
// Several nodes may live in one process; the package has no global state.
package mesh
