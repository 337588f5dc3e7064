package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
)

// Member-side prefix commands go to the running agent through its status
// socket (agentctl.go); `prefix release` is also an admin command. Which
// one `prefix release` is:
//
//   - the agent's, when --interface or --socket is given, or when no admin
//     token is at hand (no --admin-token, no WIREMESH_ADMIN_TOKEN, no
//     admin.token in --data-dir): a member gives up its own prefix;
//   - the admin's otherwise (--zone, default "default"): any member's
//     prefix in the zone is freed at the service.
const prefixAgentHelp = `
Without --interface/--socket and with an admin token at hand (--admin-token,
WIREMESH_ADMIN_TOKEN, or admin.token in --data-dir), 'prefix release' is the
admin's (any member's prefix, in --zone); otherwise it asks the running agent
to release one of its own prefixes.
`

// socketFlags select a running agent's status socket.
type socketFlags struct{ ifname, socket string }

func (a *socketFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.ifname, "interface", mesh.DefaultInterfaceName, "the agent's interface (selects its status socket)")
	fs.StringVar(&a.socket, "socket", "", "the agent's status socket (default "+defaultSocketPath("IFACE")+")")
}

func (a *socketFlags) path() string {
	if a.socket != "" {
		return a.socket
	}
	return defaultSocketPath(a.ifname)
}

func parsePrefixArg(cmd, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, usageErr("%s: %q is not a CIDR prefix such as 172.24.0.0/24", cmd, s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, usageErr("%s: %q has host bits set, did you mean %s?", cmd, s, p.Masked())
	}
	return p, nil
}

func runPrefixAdvertise(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("prefix advertise", stderr, "prefix advertise [flags] PREFIX")
	var ag socketFlags
	ag.register(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageErr("prefix advertise: want 1 argument (a CIDR prefix), got %d", len(pos))
	}
	p, err := parsePrefixArg("prefix advertise", pos[0])
	if err != nil {
		return err
	}
	return agentPrefixOp(ctx, stdout, ag.path(), agentRequest{Op: opAdvertise, Prefix: p})
}

func runPrefixRelease(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("prefix release", stderr, "prefix release [flags] PREFIX")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: wiremesh prefix release [flags] PREFIX\n%s\nflags:\n", prefixAgentHelp)
		fs.PrintDefaults()
	}
	var ad adminFlags
	var ag socketFlags
	var zone string
	ad.register(fs)
	ag.register(fs)
	fs.StringVar(&zone, "zone", api.DefaultZone, "admin: zone of the prefix")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageErr("prefix release: want 1 argument (a CIDR prefix), got %d", len(pos))
	}
	p, err := parsePrefixArg("prefix release", pos[0])
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["interface"] || set["socket"] {
		if set["zone"] || set["admin-token"] {
			return usageErr("prefix release: --zone/--admin-token are for the admin, --interface/--socket for the running agent: not both")
		}
		return agentPrefixOp(ctx, stdout, ag.path(), agentRequest{Op: opRelease, Prefix: p})
	}
	if !ad.hasToken() {
		if set["zone"] {
			return usageErr("prefix release --zone: no admin token: pass --admin-token, set WIREMESH_ADMIN_TOKEN, or run on the service's machine with --data-dir")
		}
		return agentPrefixOp(ctx, stdout, ag.path(), agentRequest{Op: opRelease, Prefix: p})
	}
	c, err := ad.client()
	if err != nil {
		return err
	}
	defer c.Close()
	s := &adminSession{Client: c, server: ad.server}
	if err := c.ReleasePrefix(ctx, zone, p); err != nil {
		return s.fail(fmt.Sprintf("prefix release %s --zone %q", p, zone), err)
	}
	fmt.Fprintf(stdout, "prefix %s released in zone %q\n", p, zone)
	return nil
}

// hasToken reports whether an admin token is at hand (see client).
func (a *adminFlags) hasToken() bool {
	if a.token != "" || os.Getenv("WIREMESH_ADMIN_TOKEN") != "" {
		return true
	}
	if a.dataDir == "" {
		return false
	}
	b, err := os.ReadFile(filepath.Join(a.dataDir, control.AdminTokenFile))
	return err == nil && strings.TrimSpace(string(b)) != "" || err != nil && !errors.Is(err, os.ErrNotExist)
}

// agentPrefixOp runs a prefix operation on the agent at path and prints
// its prefixes after it.
func agentPrefixOp(ctx context.Context, stdout io.Writer, path string, req agentRequest) error {
	name := "prefix advertise"
	if req.Op == opRelease {
		name = "prefix release"
	}
	r, err := callAgent(ctx, path, req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, req.Prefix, err)
	}
	if r.Error != "" {
		if r.Code != "" {
			return fmt.Errorf("%s %s: %s (%s)", name, req.Prefix, r.Error, r.Code)
		}
		return fmt.Errorf("%s %s: %s", name, req.Prefix, r.Error)
	}
	verb := "advertised"
	if req.Op == opRelease {
		verb = "released"
	}
	fmt.Fprintf(stdout, "prefix %s %s; the agent's child prefixes: %s\n", req.Prefix, verb, joinStrings(r.Prefixes))
	return nil
}
