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
// be tunnel addresses of the zone or inside a peer's child prefixes; anything
// else fails with [ErrNoRoute] — there is never a fallback to the host
// network.
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
//
// Several nodes may live in one process; the package has no global state.
package mesh
