package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// `wiremesh ping` asks the running agent (status socket, op "ping") to
// ping a member or an address through the mesh with Node.Ping. The agent
// answers with JSON lines: first pingStart (or an agentReply with the
// error when the target cannot be pinged at all), then one pingResult per
// echo request.

// pingRequest is the "ping" request.
type pingRequest struct {
	Op         string `json:"op"` // "ping"
	Target     string `json:"target"`
	Count      int    `json:"count"`
	IntervalMS int64  `json:"interval_ms"`
	TimeoutMS  int64  `json:"timeout_ms"`
}

// pingStart is the agent's first answer: the target resolved.
type pingStart struct {
	Addr     string `json:"addr"`
	Hostname string `json:"hostname"` // "" for an address that is no member's
	Error    string `json:"error,omitempty"`
}

// pingResult is one echo request's outcome.
type pingResult struct {
	Seq   int    `json:"seq"`
	RTTNS int64  `json:"rtt_ns,omitempty"`
	Error string `json:"error,omitempty"`
}

// Limits of a ping request.
const (
	maxPingCount    = 10000
	minPingInterval = 10 * time.Millisecond
)

// ping serves a ping request (raw is its line) on c until the pings are
// done, the client hangs up or the server closes.
func (s *statusServer) ping(c net.Conn, raw []byte) {
	c.SetDeadline(time.Time{})
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	hangup := make(chan struct{})
	go func() {
		defer close(hangup)
		c.Read(make([]byte, 1)) // returns when the client hangs up or c is closed
		cancel()
	}()
	defer func() {
		c.Close()
		<-hangup
	}()
	enc := json.NewEncoder(c)
	if err := pingStream(ctx, s.agent, raw, enc); err != nil {
		enc.Encode(agentReply{Error: err.Error()})
	}
}

// pingStream pings as raw (a pingRequest) asks and writes the answers to
// enc. An error ends the request as a whole.
func pingStream(ctx context.Context, agent agentAPI, raw []byte, enc *json.Encoder) error {
	var req pingRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return fmt.Errorf("bad ping request: %v", err)
	}
	if req.Count < 1 || req.Count > maxPingCount {
		return fmt.Errorf("ping: count %d: want 1..%d", req.Count, maxPingCount)
	}
	interval := max(time.Duration(req.IntervalMS)*time.Millisecond, minPingInterval)
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = mesh.DefaultPingTimeout
	}
	addr, host, err := resolveTarget(agent.Status(), req.Target)
	if err != nil {
		return err
	}
	if err := enc.Encode(pingStart{Addr: addr.String(), Hostname: host}); err != nil {
		return nil
	}
	start := time.Now()
	for seq := 1; seq <= req.Count; seq++ {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		rtt, err := agent.Ping(pctx, addr)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		res := pingResult{Seq: seq, RTTNS: rtt.Nanoseconds()}
		if err != nil {
			// Node.Ping's errors start with "mesh: ping ADDR: ".
			msg := strings.TrimPrefix(err.Error(), "mesh: ping "+addr.String()+": ")
			if errors.Is(err, mesh.ErrNoRoute) {
				return errors.New(msg)
			}
			res = pingResult{Seq: seq, Error: msg}
		}
		if err := enc.Encode(res); err != nil || seq == req.Count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(start.Add(time.Duration(seq) * interval))):
		}
	}
	return nil
}

// resolveTarget turns target (an address, or the hostname of exactly one
// member, this one included) into the address to ping and the member's
// hostname ("" if the address is no member's).
func resolveTarget(st mesh.Status, target string) (netip.Addr, string, error) {
	type member struct {
		name  string
		addrs []netip.Addr
	}
	members := []member{{st.Self.Hostname, st.Self.Addrs}}
	for _, p := range st.Peers {
		members = append(members, member{p.Hostname, p.Addrs})
	}
	if a, err := netip.ParseAddr(target); err == nil {
		a = a.Unmap()
		for _, m := range members {
			for _, ma := range m.addrs {
				if ma == a {
					return a, m.name, nil
				}
			}
		}
		return a, "", nil
	}
	name := strings.TrimSuffix(strings.ToLower(target), ".")
	var found []member
	for _, m := range members {
		if name != "" && strings.ToLower(m.name) == name && len(m.addrs) > 0 {
			found = append(found, m)
		}
	}
	switch len(found) {
	case 0:
		return netip.Addr{}, "", fmt.Errorf("no member of the zone is called %q and it is not an IP address ('wiremesh status' lists the members)", target)
	case 1:
		return found[0].addrs[0], found[0].name, nil
	}
	var addrs []string
	for _, m := range found {
		addrs = append(addrs, m.addrs[0].String())
	}
	return netip.Addr{}, "", fmt.Errorf("%d members are called %q (%s): ping one of their addresses", len(found), target, strings.Join(addrs, ", "))
}

const pingUsage = `usage: wiremesh ping [-c COUNT] [-i INTERVAL] [-W TIMEOUT] [--interface wg0 | --socket PATH] MEMBER|ADDRESS

Pings a member (by hostname) or an address in the mesh (a tunnel address,
or one inside a member's child prefixes) from the running agent, through
the mesh, and prints each round-trip time. Stops after COUNT replies or
on Ctrl-C. Exits 1 when no reply came back.

flags:
`

// runPing implements `wiremesh ping`.
func runPing(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("ping", stderr, "ping [flags] MEMBER|ADDRESS")
	fs.Usage = func() {
		fmt.Fprint(stderr, pingUsage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	ifname := fs.String("interface", mesh.DefaultInterfaceName, "the agent's interface (selects its status socket)")
	sock := fs.String("socket", "", "the agent's status socket (default "+defaultSocketPath("IFACE")+")")
	count := fs.Int("c", 4, "number of echo requests")
	interval, timeout := time.Second, 5*time.Second
	fs.Var(durationFlag{&interval}, "i", "time between echo requests (default 1s)")
	fs.Var(durationFlag{&timeout}, "W", "time to wait for each reply (default 5s)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("ping: want one member name or address, got %d arguments", len(pos))
	}
	if *count < 1 || *count > maxPingCount {
		return usageErr("ping: -c %d: want 1..%d", *count, maxPingCount)
	}
	if interval < minPingInterval || timeout <= 0 {
		return usageErr("ping: -i must be at least %v and -W positive", minPingInterval)
	}
	path := *sock
	if path == "" {
		path = defaultSocketPath(*ifname)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	req := pingRequest{Op: "ping", Target: pos[0], Count: *count, IntervalMS: interval.Milliseconds(), TimeoutMS: timeout.Milliseconds()}
	return pingVia(ctx, path, req, stdout)
}

// pingVia sends req to the agent at path and prints the answers like ping.
func pingVia(ctx context.Context, path string, req pingRequest, w io.Writer) error {
	c, err := dialAgent(ctx, path)
	if err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return fmt.Errorf("ping: status socket %s: %w", path, err)
	}
	dec := json.NewDecoder(c)
	var st pingStart
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("ping: status socket %s: reading the answer: %w", path, err)
	}
	if st.Error != "" {
		return fmt.Errorf("ping %s: %s", req.Target, st.Error)
	}
	if st.Addr == "" {
		return fmt.Errorf("ping: the agent on %s does not know ping (an older version?): restart it", path)
	}
	name := st.Addr
	if st.Hostname != "" {
		name = fmt.Sprintf("%s (%s)", st.Hostname, st.Addr)
	}
	fmt.Fprintf(w, "PING %s through the mesh\n", name)
	var sent, received int
	var minRTT, maxRTT, sum time.Duration
	var fatal error
	for {
		var r pingResult
		if err := dec.Decode(&r); err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				fatal = fmt.Errorf("ping: status socket %s: %w", path, err)
			}
			break
		}
		if r.Seq == 0 {
			fatal = fmt.Errorf("ping %s: %s", req.Target, r.Error)
			break
		}
		sent++
		if r.Error != "" {
			fmt.Fprintf(w, "no reply from %s: seq=%d: %s\n", st.Addr, r.Seq, r.Error)
			continue
		}
		rtt := time.Duration(r.RTTNS)
		received++
		sum += rtt
		if received == 1 || rtt < minRTT {
			minRTT = rtt
		}
		maxRTT = max(maxRTT, rtt)
		fmt.Fprintf(w, "reply from %s: seq=%d time=%s\n", st.Addr, r.Seq, ms(rtt))
	}
	fmt.Fprintf(w, "--- %s ping statistics ---\n", name)
	loss := 0
	if sent > 0 {
		loss = 100 * (sent - received) / sent
	}
	fmt.Fprintf(w, "%d sent, %d received, %d%% loss", sent, received, loss)
	if received > 0 {
		fmt.Fprintf(w, ", rtt min/avg/max = %s/%s/%s", ms(minRTT), ms(sum/time.Duration(received)), ms(maxRTT))
	}
	fmt.Fprintln(w)
	switch {
	case fatal != nil:
		return fatal
	case received == 0 && sent > 0:
		return fmt.Errorf("ping %s: no reply", req.Target)
	}
	return nil
}

// ms formats d in milliseconds with three decimals, as ping does.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}
