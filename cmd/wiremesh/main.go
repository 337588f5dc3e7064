// Command wiremesh runs the wiremesh coordination service (`wiremesh
// serve`), joins machines to a mesh (`wiremesh join`, the default, for a
// spoke; `wiremesh router` for a member with child prefixes), shows the
// running agent (`wiremesh status`, `wiremesh ping`), reports what the
// network allows a member (`wiremesh netcheck`), and administers a service
// (`wiremesh zone|token|device|prefix ...`).
//
// Exit status: 0 on success, 1 when the operation failed, 2 on a usage
// error (unknown command, bad flag or argument).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// runFunc runs one subcommand. args excludes the command words. It parses
// its own flags (a flag.FlagSet writing to stderr), writes results to
// stdout, and returns an error a person can act on; wrap usage problems
// with usageErr.
type runFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// command is one entry of the command table: a leaf (run) or a group of
// subcommands (sub), e.g. "zone" → "create", "list".
type command struct {
	summary string
	run     runFunc
	sub     map[string]*command
}

// commands is the command table. To add a command, add an entry here and
// its run function in its own file.
var commands = map[string]*command{
	"serve":    {summary: "run the coordination service", run: runServe},
	"join":     {summary: "join a mesh as a spoke (the default: `wiremesh URL` is `wiremesh join URL`); kernel mode, --userspace without root", run: runJoin},
	"router":   {summary: "join a mesh as a router for child prefixes: router --child-prefix=CIDR [...] URL", run: runRouter},
	"down":     {summary: "leave the mesh for good: delete this machine's device at the service (through the running agent, or with its state directory)", run: runDown},
	"status":   {summary: "show the running agent's peers: status [--interface wg0 | --socket PATH] [--json]", run: runStatus},
	"ping":     {summary: "ping a member or address through the running agent: ping [-c N] MEMBER|ADDRESS", run: runPing},
	"demo":     {summary: "run an in-process service and three userspace members, and check they reach each other", run: runDemo},
	"netcheck": {summary: "report what this network allows a member: UDP, public address, NAT mapping, latency, relay: netcheck [--json] URL", run: runNetcheck},
	"version":  {summary: "print the version and build information (also --version)", run: runVersion},
	"zone": {summary: "manage zones (separate meshes)", sub: map[string]*command{
		"create": {summary: "create a zone: zone create NAME [--ipv4-pool CIDR] [--ipv6-pool CIDR] [--allow-exit-nodes]", run: runZoneCreate},
		"list":   {summary: "list zones", run: runZoneList},
	}},
	"token": {summary: "manage join tokens", sub: map[string]*command{
		"create": {summary: "create a join token (prints only the token): token create [--zone Z] [--reusable] [--expires 24h] [--tag NAME ...]", run: runTokenCreate},
		"list":   {summary: "list join tokens: token list [--zone Z]", run: runTokenList},
		"delete": {summary: "delete a join token: token delete ID", run: runTokenDelete},
	}},
	"device": {summary: "manage devices (members)", sub: map[string]*command{
		"list":   {summary: "list devices: device list [--zone Z]", run: runDeviceList},
		"delete": {summary: "delete a device, freeing its addresses and prefixes: device delete [--revoke] ID", run: runDeviceDelete},
	}},
	"policy": {summary: "manage a zone's access policy (tags and rules)", sub: map[string]*command{
		"set":    {summary: "set a zone's policy from a JSON file: policy set --zone Z FILE", run: runPolicySet},
		"get":    {summary: "print a zone's policy: policy get --zone Z", run: runPolicyGet},
		"delete": {summary: "remove a zone's policy (everything allowed again): policy delete --zone Z", run: runPolicyDelete},
		"check":  {summary: "say whether a flow is allowed, or which rule is missing: policy check --zone Z FROM TO:PORT [--proto tcp]", run: runPolicyCheck},
	}},
	"prefix": {summary: "manage child prefixes", sub: map[string]*command{
		"list":      {summary: "list allocated child prefixes: prefix list [--zone Z]", run: runPrefixList},
		"advertise": {summary: "the running agent advertises a child prefix: prefix advertise [--interface I | --socket S] PREFIX", run: runPrefixAdvertise},
		"release":   {summary: "release a child prefix: of the running agent, or as admin with --zone Z: prefix release PREFIX", run: runPrefixRelease},
	}},
}

// defaultCommand runs when the first argument is not a command (a URL or a
// flag): `wiremesh https://svc:8443` joins.
const defaultCommand = "join"

// usageError marks an error as a usage error (exit status 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErr returns a usage error with a formatted message.
func usageErr(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, commands, nil, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "wiremesh: %s\n", plainMessage(err))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func dispatch(ctx context.Context, table map[string]*command, path, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stderr, table, path)
		if len(args) == 0 && len(path) > 0 {
			return usageErr("%s: missing subcommand", strings.Join(path, " "))
		}
		if len(args) == 0 {
			return usageErr("missing command")
		}
		return flag.ErrHelp
	}
	if len(path) == 0 && (args[0] == "--version" || args[0] == "-version") {
		return runVersion(ctx, args[1:], stdout, stderr)
	}
	c, ok := table[args[0]]
	if !ok {
		if len(path) == 0 && looksLikeHostPort(args[0]) {
			return usageErr("unknown command %q: a service URL needs a scheme: did you mean wiremesh join https://%s?", args[0], args[0])
		}
		if len(path) == 0 && (strings.Contains(args[0], "://") || strings.HasPrefix(args[0], "-")) {
			if d, ok := table[defaultCommand]; ok {
				return d.run(ctx, args, stdout, stderr)
			}
		}
		printUsage(stderr, table, path)
		return usageErr("unknown command %q", strings.TrimSpace(strings.Join(append(path, args[0]), " ")))
	}
	if c.sub != nil {
		return dispatch(ctx, c.sub, append(path, args[0]), args[1:], stdout, stderr)
	}
	return c.run(ctx, args[1:], stdout, stderr)
}

func printUsage(w io.Writer, table map[string]*command, path []string) {
	prefix := strings.Join(append([]string{"wiremesh"}, path...), " ")
	fmt.Fprintf(w, "usage: %s COMMAND [flags] [args]\n\ncommands:\n", prefix)
	names := make([]string, 0, len(table))
	for n := range table {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, n := range names {
		fmt.Fprintf(tw, "  %s\t%s\n", n, table[n].summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nRun '%s COMMAND -h' for the flags of a command.\n", prefix)
}

// newFlagSet returns a flag set for a command; parse errors are usage
// errors. The flag package's own report of a bad flag is suppressed: the
// error is printed once, by run, after the usage.
func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: wiremesh %s\n\nflags:\n", usage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parseFlags parses flags given before or between positional arguments
// (everything after "--" is positional) and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos, rest []string
	for i, a := range args {
		if a == "--" {
			args, rest = args[:i], args[i+1:]
			break
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &usageError{fmt.Errorf("%s: %w", fs.Name(), err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}
