// Package wiremesh joins machines, and the containers and services behind
// them, into one WireGuard mesh.
//
// # Overview
//
// A coordination service (package control, command "wiremesh serve") hands
// out tunnel addresses and keeps every member's peer list current. Members
// join with the agent, either from Go (package mesh) or with the wiremesh
// command. A member may advertise child prefixes — a Docker bridge network,
// a loopback range, a lab subnet — that every other member routes to
// through the tunnel.
//
// # Packages
//
//   - mesh: the agent. mesh.Join registers a node and brings up its
//     WireGuard device, in userspace (gVisor netstack, no root) or kernel
//     mode (a TUN device driven by wireguard-go).
//   - control: the coordination service; control/api holds its wire types,
//     control/store its persistence (SQLite by default).
//   - ipam: prefix validation, tunnel address pools, the child-prefix registry.
//   - route: addresses, routes and firewall rules for kernel mode.
//   - meshtest: an in-process service for tests.
//
// # Joining from Go
//
//	n, err := mesh.Join(ctx, "https://coord.example:8443", mesh.WithToken(tok))
//	if err != nil { ... }
//	defer n.Close()
//	c, err := n.Dial(ctx, "tcp", "172.24.0.2:80") // a container behind another member
package wiremesh
