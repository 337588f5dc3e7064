package main

import (
	"context"
	"io"
)

const routerUsage = `usage: wiremesh router --child-prefix=CIDR [--child-prefix=CIDR ...] [flags] URL [URL...]

Joins the mesh at URL as a router: every member routes the child prefixes
(networks behind this machine: a Docker bridge, a LAN, addresses on lo) to
this machine through the mesh. In kernel mode (the default, root) this
machine forwards between the mesh and those networks: IP forwarding on,
nftables rules accepting only mesh <-> child-prefix traffic, and with
--masquerade source NAT into the child prefixes. A prefix, once allocated,
stays this machine's across restarts until released ('wiremesh prefix
release').

flags:
`

// runRouter implements `wiremesh router`.
func runRouter(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAgent(ctx, "router", routerUsage, args, stdout, stderr)
}
