package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// The status socket: a running agent listens on a unix socket (mode 0600
// in a 0700 directory). A client sends one request line (agentctl.go) and
// gets one JSON document back: the agent's mesh.Status for a status
// request (`wiremesh status`), or the result of a prefix command
// (`wiremesh prefix advertise|release`); a ping request gets a stream of
// JSON lines (ping.go).

// statusTimeout bounds one status exchange on either side.
const statusTimeout = 5 * time.Second

// defaultSocketPath is the status socket of the agent on interface ifname:
// /run/wiremesh/<ifname>.sock for root, else under $XDG_RUNTIME_DIR (or
// the temporary directory) so that userspace agents work without root.
func defaultSocketPath(ifname string) string {
	dir := "/run/wiremesh"
	if os.Geteuid() != 0 {
		if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
			dir = filepath.Join(d, "wiremesh")
		} else {
			dir = filepath.Join(os.TempDir(), "wiremesh-"+strconv.Itoa(os.Geteuid()))
		}
	}
	return filepath.Join(dir, ifname+".sock")
}

// statusServer answers status requests on a unix socket until Close.
type statusServer struct {
	ln     net.Listener
	path   string
	agent  agentAPI
	ctx    context.Context // done on Close: ends a running ping
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu    sync.Mutex
	leave func() error // answers a leave request (wiremesh down); nil: refused
}

// setLeave makes the server answer leave requests with fn.
func (s *statusServer) setLeave(fn func() error) {
	s.mu.Lock()
	s.leave = fn
	s.mu.Unlock()
}

// serveStatus listens on path (replacing a stale socket file) and answers
// requests about agent on every connection.
func serveStatus(path string, agent agentAPI) (*statusServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := checkSocketDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("status socket %s: a file that is not a socket is in the way", path)
		}
		if statusSocketLive(path) {
			return nil, fmt.Errorf("status socket %s: another agent answers on it", path)
		}
		os.Remove(path) // left by a crashed agent
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	s := &statusServer{ln: ln, path: path, agent: agent}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *statusServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.handle(c)
		}()
	}
}

// Close stops serving, ends a running ping, waits for the requests in
// progress (at most agentOpTimeout), and removes the socket file.
// Idempotent.
func (s *statusServer) Close() error {
	s.once.Do(func() {
		s.ln.Close() // removes the file too (unlink on close)
		s.cancel()
		s.wg.Wait()
		os.Remove(s.path)
	})
	return nil
}

// statusSocketLive reports whether an agent answers on path.
func statusSocketLive(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// readStatus asks the agent at path for its status.
func readStatus(ctx context.Context, path string) (mesh.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	c, err := dialAgent(ctx, path)
	if err != nil {
		return mesh.Status{}, err
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(agentRequest{Op: opStatus}); err != nil {
		return mesh.Status{}, fmt.Errorf("status socket %s: %w", path, err)
	}
	var st mesh.Status
	if err := json.NewDecoder(c).Decode(&st); err != nil {
		return mesh.Status{}, fmt.Errorf("status socket %s: reading the answer: %w", path, err)
	}
	return st, nil
}

const statusUsage = `usage: wiremesh status [--interface wg0 | --socket PATH] [--json]

Prints the local member and its peers (name, tunnel address, prefixes,
path (direct or relay), endpoint, online, last handshake, bytes) as the running
agent sees them.

flags:
`

// runStatus implements `wiremesh status`.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr, "status [flags]")
	fs.Usage = func() {
		fmt.Fprint(stderr, statusUsage)
		fs.PrintDefaults()
	}
	var target agentTarget
	target.register(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON (format: docs/STATUS-JSON.md)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("status: unexpected arguments %q", pos)
	}
	target.parsed(fs)
	path := target.socketPath()
	st, err := readStatus(ctx, path)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(statusJSONOf(st))
	}
	return printStatus(stdout, st, time.Now())
}

// printStatus writes st as a header and a peer table.
func printStatus(w io.Writer, st mesh.Status, now time.Time) error {
	self := st.Self
	where := "userspace mode"
	if self.Interface != "" {
		where = "interface " + self.Interface
	}
	service := "connected"
	if !st.ControlConnected {
		service = "not connected (running with the last known peers)"
	}
	fmt.Fprintf(w, "%s in zone %q, %s, WireGuard port %d\n", self.Hostname, self.Zone, where, self.ListenPort)
	fmt.Fprintf(w, "  addresses: %s\n", joinStrings(self.Addrs))
	fmt.Fprintf(w, "  prefixes:  %s\n", joinStrings(self.Prefixes))
	fmt.Fprintf(w, "  service:   %s (revision %d)\n", service, st.Revision)
	fmt.Fprintf(w, "  reach:     %s\n\n", reachLine(self))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDRESS\tPREFIXES\tPATH\tENDPOINT\tONLINE\tLAST HANDSHAKE\tRX\tTX")
	for _, p := range st.Peers {
		ep, path := "-", p.Path
		if p.Endpoint.IsValid() {
			ep = p.Endpoint.String()
		} else if p.Trimmed {
			ep = "(idle, trimmed)"
		}
		if path == "" {
			path = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Hostname, joinStrings(p.Addrs), joinStrings(p.Prefixes), path, ep,
			onlineStr(now, p), ago(now, p.LastHandshake), bytesStr(p.RxBytes), bytesStr(p.TxBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Peers) == 0 {
		fmt.Fprintln(w, "(no peers)")
	}
	for _, s := range st.SkippedRoutes {
		fmt.Fprintf(w, "not routed: %s: %s\n", s.Prefix, s.Reason)
	}
	return printFilter(w, st.Filter)
}

// printFilter writes the inbound filter's rules and counters (nothing
// when the zone has no policy).
func printFilter(w io.Writer, f mesh.FilterStatus) error {
	if !f.Active {
		return nil
	}
	fmt.Fprintf(w, "\ninbound filter (zone policy): %d rules, %d packets of new flows dropped\n", len(f.Rules), f.Dropped)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RULE\tFROM\tTO\tPROTO\tPORTS\tACCEPTED")
	for _, r := range f.Rules {
		ports := "*"
		if len(r.Ports) > 0 {
			ports = joinStrings(r.Ports)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\n", r.Rule, joinStrings(r.Src), joinStrings(r.Dst), r.Proto, ports, r.Accepted)
	}
	fmt.Fprintf(tw, "-\t*\t*\t*\t*\tdropped %d\n", f.Dropped)
	return tw.Flush()
}

// reachLine says how peers reach this member: its NAT and the relay.
func reachLine(self mesh.SelfStatus) string {
	nat := string(self.NAT)
	if nat == "" {
		nat = "unknown"
	}
	relay := "relay not in use"
	if self.Relay {
		relay = "relay connected"
	}
	return "NAT " + nat + ", " + relay
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

func bytesStr(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
