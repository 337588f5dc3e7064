package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/adminclient"
	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// adminFlags are the flags every admin command takes.
type adminFlags struct {
	server, token, dataDir, fingerprint string
}

func (a *adminFlags) register(fs *flag.FlagSet) {
	server := os.Getenv("WIREMESH_SERVER")
	if server == "" {
		server = "https://127.0.0.1:8443"
	}
	fs.StringVar(&a.server, "server", server, "service URL (env WIREMESH_SERVER)")
	fs.StringVar(&a.token, "admin-token", "", "admin token (default: env WIREMESH_ADMIN_TOKEN, else the admin.token file in --data-dir)")
	fs.StringVar(&a.dataDir, "data-dir", defaultDataDir(), "the service's data directory when on the same machine: admin token and certificate to trust")
	fs.StringVar(&a.fingerprint, "tls-fingerprint", "", "pin the service certificate by its SHA-256 (hex); default: the certificate in --data-dir, else the system roots")
}

// client builds the admin client from the flags.
func (a *adminFlags) client() (*adminclient.Client, error) {
	tok := a.token
	if tok == "" {
		tok = os.Getenv("WIREMESH_ADMIN_TOKEN")
	}
	if tok == "" && a.dataDir != "" {
		b, err := os.ReadFile(filepath.Join(a.dataDir, control.AdminTokenFile))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("reading admin token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, usageErr("no admin token: pass --admin-token, set WIREMESH_ADMIN_TOKEN, or run on the service's machine with --data-dir")
	}
	if err := checkServiceURL("--server", a.server); err != nil {
		return nil, err
	}
	o := adminclient.Options{AdminToken: tok}
	switch {
	case a.fingerprint != "":
		fp, err := tlspin.Parse(a.fingerprint)
		if err != nil {
			return nil, usageErr("--tls-fingerprint: %v", err)
		}
		o.Fingerprint = fp
	case strings.HasPrefix(a.server, "https://") && a.dataDir != "":
		fp, err := tlspin.FromCertFile(filepath.Join(a.dataDir, control.TLSCertFile))
		if err == nil {
			o.Fingerprint = fp
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("trusting the service certificate: %w", err)
		}
	}
	c, err := adminclient.New(a.server, o)
	if err != nil {
		return nil, usageErr("--server: %v", err)
	}
	return c, nil
}

// adminSession is an admin client and the URL it calls.
type adminSession struct {
	*adminclient.Client
	server string
}

// fail turns the failure of op into a message a person can act on.
func (s *adminSession) fail(op string, err error) error { return adminError(op, s.server, err) }

// adminCmd parses the common admin flags plus extra ones, checks the
// number of positional arguments, and builds the client.
func adminCmd(name, usage string, stderr io.Writer, args []string, nargs int, extra func(*flag.FlagSet)) (*adminSession, []string, error) {
	fs := newFlagSet(name, stderr, usage)
	var a adminFlags
	a.register(fs)
	if extra != nil {
		extra(fs)
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, nil, err
	}
	if len(pos) != nargs {
		fs.Usage()
		return nil, nil, usageErr("%s: want %d argument(s), got %d", name, nargs, len(pos))
	}
	c, err := a.client()
	if err != nil {
		return nil, nil, err
	}
	return &adminSession{Client: c, server: a.server}, pos, nil
}

// jsonFlag registers --json on a list command.
func jsonFlag(fs *flag.FlagSet, v *bool) {
	fs.BoolVar(v, "json", false, "print JSON: an array of the admin API's objects (snake_case keys, RFC 3339 times, [] when empty)")
}

// printJSONList prints items as an indented JSON array ([] when empty).
func printJSONList[T any](w io.Writer, items []T) error {
	if items == nil {
		items = []T{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(items)
}

// adminList runs the list command name ("zone list"): with byZone it
// takes --zone (empty: all zones), which fetch gets; it prints what fetch
// returns as JSON (--json) or as a table with header and one row per item.
func adminList[T any](ctx context.Context, name string, byZone bool, args []string, stdout, stderr io.Writer,
	fetch func(c *adminclient.Client, ctx context.Context, zone string) ([]T, error), header string, row func(io.Writer, T)) error {
	var zone string
	var asJSON bool
	c, _, err := adminCmd(name, name+" [flags]", stderr, args, 0, func(fs *flag.FlagSet) {
		if byZone {
			fs.StringVar(&zone, "zone", "", "only this zone (default: all)")
		}
		jsonFlag(fs, &asJSON)
	})
	if err != nil {
		return err
	}
	defer c.Close()
	items, err := fetch(c.Client, ctx, zone)
	if err != nil {
		return c.fail(name, err)
	}
	if asJSON {
		return printJSONList(stdout, items)
	}
	tw := newTable(stdout, header)
	for _, it := range items {
		row(tw, it)
	}
	return tw.Flush()
}

func newTable(w io.Writer, header string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	return tw
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func joinStrings[T fmt.Stringer](xs []T) string {
	if len(xs) == 0 {
		return "-"
	}
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func runZoneCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var v4, v6 string
	var exits bool
	var min4, min6, maxPrefixes int
	c, pos, err := adminCmd("zone create", "zone create [flags] NAME", stderr, args, 1, func(fs *flag.FlagSet) {
		fs.StringVar(&v4, "ipv4-pool", "", "tunnel IPv4 pool (default 100.64.0.0/16)")
		fs.StringVar(&v6, "ipv6-pool", "", "tunnel IPv6 pool (default: a ULA /64 derived from the name)")
		fs.BoolVar(&exits, "allow-exit-nodes", false, "allow members to advertise default routes (0.0.0.0/0, ::/0)")
		fs.IntVar(&min4, "min-prefix-ipv4", 0, "shortest IPv4 child prefix length allowed, other than /0 (0: the default, /12)")
		fs.IntVar(&min6, "min-prefix-ipv6", 0, "shortest IPv6 child prefix length allowed, other than /0 (0: the default, /32)")
		fs.IntVar(&maxPrefixes, "max-prefixes", 0, "most child prefixes one member may hold (0: the default, 64)")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	z, err := c.CreateZone(ctx, api.CreateZoneRequest{Name: pos[0], IPv4Pool: v4, IPv6Pool: v6, AllowExitNodes: exits,
		MinPrefixBits4: min4, MinPrefixBits6: min6, MaxPrefixes: maxPrefixes})
	if err != nil {
		return c.fail(fmt.Sprintf("zone create %q", pos[0]), err)
	}
	fmt.Fprintf(stdout, "zone %q created: tunnel pools %s and %s", z.Name, z.IPv4Pool, z.IPv6Pool)
	if z.AllowExitNodes {
		fmt.Fprint(stdout, ", exit nodes allowed")
	}
	fmt.Fprintf(stdout, "; child prefixes at least /%d (IPv4) and /%d (IPv6), at most %d per member\n",
		z.MinPrefixBits4, z.MinPrefixBits6, z.MaxPrefixes)
	return nil
}

// runZoneList lists zones.
func runZoneList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return adminList(ctx, "zone list", false, args, stdout, stderr,
		func(c *adminclient.Client, ctx context.Context, _ string) ([]api.Zone, error) { return c.Zones(ctx) },
		"NAME\tIPV4 POOL\tIPV6 POOL\tEXIT NODES\tCREATED",
		func(w io.Writer, z api.Zone) {
			fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\n", z.Name, z.IPv4Pool, z.IPv6Pool, z.AllowExitNodes, fmtTime(z.CreatedAt))
		})
}

func runTokenCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var zone string
	var reusable bool
	var expires time.Duration
	var tags stringList
	c, _, err := adminCmd("token create", "token create [flags]", stderr, args, 0, func(fs *flag.FlagSet) {
		fs.Var(&tags, "tag", "give every device joined with the token this policy tag (repeatable)")
		fs.StringVar(&zone, "zone", api.DefaultZone, "zone the token joins")
		fs.BoolVar(&reusable, "reusable", false, "the token may be used by many machines (default: single use)")
		fs.Var(durationFlag{&expires}, "expires", "lifetime, a duration such as 24h or 30m (default: never expires)")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	if expires < 0 || (expires > 0 && expires < time.Second) {
		return usageErr("token create: --expires %s: want 0 (never) or at least 1s", expires)
	}
	jt, err := c.CreateToken(ctx, api.CreateTokenRequest{Zone: zone, Reusable: reusable, ExpiresInSeconds: int64(expires / time.Second), Tags: tags})
	if err != nil {
		return c.fail(fmt.Sprintf("token create --zone %q", zone), err)
	}
	fmt.Fprintln(stdout, jt.Token)
	return nil
}

// runTokenList lists join tokens.
func runTokenList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return adminList(ctx, "token list", true, args, stdout, stderr,
		(*adminclient.Client).Tokens,
		"ID\tZONE\tREUSABLE\tTAGS\tEXPIRES\tUSED\tCREATED",
		func(w io.Writer, t api.JoinToken) {
			fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\t%s\t%s\n", t.ID, t.Zone, t.Reusable, tagList(t.Tags), fmtTime(t.ExpiresAt), fmtTime(t.UsedAt), fmtTime(t.CreatedAt))
		})
}

func runTokenDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, pos, err := adminCmd("token delete", "token delete [flags] ID", stderr, args, 1, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.DeleteToken(ctx, pos[0]); err != nil {
		return c.fail(fmt.Sprintf("token delete %q", pos[0]), err)
	}
	fmt.Fprintf(stdout, "token %s deleted\n", pos[0])
	return nil
}

// runDeviceList lists devices.
func runDeviceList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return adminList(ctx, "device list", true, args, stdout, stderr,
		(*adminclient.Client).Devices,
		"ID\tZONE\tHOSTNAME\tIPV4\tIPV6\tPREFIXES\tENDPOINTS\tONLINE\tLAST SEEN\tUPDATED",
		func(w io.Writer, d api.Device) {
			online := "-"
			if d.Online != nil {
				online = map[bool]string{true: "yes", false: "no"}[*d.Online]
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Zone, d.Hostname, d.IPv4, d.IPv6,
				joinStrings(d.ChildPrefixes), joinStrings(d.Endpoints), online, fmtTime(d.LastSeen), fmtTime(d.UpdatedAt))
		})
}

func runDeviceDelete(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var revoke bool
	c, pos, err := adminCmd("device delete", "device delete [flags] ID", stderr, args, 1, func(fs *flag.FlagSet) {
		fs.BoolVar(&revoke, "revoke", false, "also refuse the device's key from then on (a lost or stolen machine): it can never register again")
	})
	if err != nil {
		return err
	}
	defer c.Close()
	del := c.DeleteDevice
	if revoke {
		del = c.RevokeDevice
	}
	if err := del(ctx, pos[0]); err != nil {
		return c.fail(fmt.Sprintf("device delete %q", pos[0]), err)
	}
	fmt.Fprintf(stdout, "device %s deleted; its addresses and prefixes are free\n", pos[0])
	if revoke {
		fmt.Fprintf(stdout, "its key is revoked: it can never register again\n")
	}
	return nil
}

// runPrefixList lists allocated child prefixes.
func runPrefixList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return adminList(ctx, "prefix list", true, args, stdout, stderr,
		(*adminclient.Client).Prefixes,
		"ZONE\tPREFIX\tDEVICE\tHOSTNAME",
		func(w io.Writer, p api.PrefixEntry) {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", p.Zone, p.Prefix, p.DeviceID, p.Hostname)
		})
}
