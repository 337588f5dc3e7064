package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
)

// An agent's identity lives in a state directory that lasts by default, so
// that the seed's commands keep the same device, addresses and prefixes
// across restarts and reboots. Agents are told apart by an instance name
// keyed by mode and interface: a kernel-mode agent is its interface
// ("wg0"), a userspace agent "userspace" (or "userspace-NAME" with
// --interface NAME), so two agents on one host never share a default state
// directory or status socket by accident (and a shared directory is refused
// by the agent's lock anyway).

// agentInstance names the agent for its default state dir and socket.
func agentInstance(userspace bool, ifname string, ifaceSet bool) string {
	switch {
	case !userspace:
		return ifname
	case ifaceSet:
		return "userspace-" + ifname
	default:
		return "userspace"
	}
}

// defaultStateDir is the state directory of agent instance: as root
// /var/lib/wiremesh/<instance>, else $XDG_STATE_HOME/wiremesh/<instance>
// (~/.local/state without XDG_STATE_HOME).
func defaultStateDir(instance string) (string, error) {
	return stateDirFor(os.Geteuid(), instance)
}

// stateDirFor is defaultStateDir for the user euid.
func stateDirFor(euid int, instance string) (string, error) {
	if euid == 0 {
		return filepath.Join("/var/lib/wiremesh", instance), nil
	}
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" || !filepath.IsAbs(base) {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no state directory: neither $XDG_STATE_HOME nor a home directory is set (pass --state-dir, or --ephemeral): %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(base, "wiremesh", instance), nil
}

// agentTarget selects a running agent, or its state directory: the flags
// of `wiremesh status` and `wiremesh down`.
type agentTarget struct {
	ifname, socket, stateDir string
	userspace, ifaceSet      bool
}

func (a *agentTarget) register(fs *flag.FlagSet) {
	fs.StringVar(&a.ifname, "interface", mesh.DefaultInterfaceName, "the agent's interface (selects its status socket and state directory)")
	fs.BoolVar(&a.userspace, "userspace", false, "the agent runs in userspace mode")
	fs.StringVar(&a.socket, "socket", "", "the agent's status socket (default "+defaultSocketPath("INSTANCE")+")")
}

// parsed records which flags were given; call after parsing fs.
func (a *agentTarget) parsed(fs *flag.FlagSet) {
	fs.Visit(func(f *flag.Flag) { a.ifaceSet = a.ifaceSet || f.Name == "interface" })
}

func (a *agentTarget) instance() string { return agentInstance(a.userspace, a.ifname, a.ifaceSet) }

func (a *agentTarget) socketPath() string {
	if a.socket != "" {
		return a.socket
	}
	return defaultSocketPath(a.instance())
}

// leaveTimeout bounds the agent's side of `wiremesh down`.
const leaveTimeout = agentOpTimeout

// doLeave answers a leave request with the agent's leave hook.
func (s *statusServer) doLeave() error {
	s.mu.Lock()
	leave := s.leave
	s.mu.Unlock()
	if leave == nil {
		return errors.New("the agent cannot leave yet")
	}
	return leave()
}

// askLeave asks the agent on path to delete its device and stop, and
// returns its status from before.
func askLeave(ctx context.Context, path string) (mesh.Status, error) {
	st, err := readStatus(ctx, path)
	if err != nil {
		return st, err
	}
	r, err := callAgent(ctx, path, agentRequest{Op: opLeave})
	if err != nil {
		return st, err
	}
	if r.Error != "" {
		return st, errors.New(r.Error)
	}
	return st, nil
}

const downUsage = `usage: wiremesh down [--interface wg0 | --userspace | --socket PATH] [--state-dir DIR]

Leaves the mesh for good: deletes this machine's device at the service,
freeing its tunnel addresses and child prefixes. A running agent is asked
through its status socket (it deletes its device and stops); otherwise the
device token kept in the agent's state directory is used (pass --token
when the service's certificate is self-signed, to pin it). Stopping an
agent (Ctrl-C, SIGTERM) keeps the device; an --ephemeral one is deleted
when it stops.

flags:
`

// runDown implements `wiremesh down`.
func runDown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("down", stderr, "down [flags]")
	fs.Usage = func() {
		fmt.Fprint(stderr, downUsage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	var a agentTarget
	a.register(fs)
	fs.StringVar(&a.stateDir, "state-dir", "", "the agent's state directory (default: the one of --interface/--userspace)")
	token := fs.String("token", "", "a join token of the service: pins its certificate (default $WIREMESH_TOKEN)")
	insecure := fs.Bool("insecure-http", false, "allow a plain http:// service URL on a non-loopback host")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("down: unexpected arguments %q", pos)
	}
	a.parsed(fs)
	if sock := a.socketPath(); statusSocketLive(sock) {
		st, err := askLeave(ctx, sock)
		if err != nil {
			return fmt.Errorf("down: %w", err)
		}
		fmt.Fprintf(stdout, "%s left zone %q: its device is deleted and the agent stopped\n", st.Self.Hostname, st.Self.Zone)
		return nil
	}
	dir := a.stateDir
	if dir == "" {
		if dir, err = defaultStateDir(a.instance()); err != nil {
			return fmt.Errorf("down: %w", err)
		}
	}
	if *token == "" {
		*token = os.Getenv("WIREMESH_TOKEN")
	}
	opts := []mesh.Option{mesh.WithToken(*token)}
	if *insecure {
		opts = append(opts, mesh.WithInsecureHTTP())
	}
	if err := mesh.Forget(ctx, dir, opts...); err != nil {
		if errors.Is(err, mesh.ErrStateDirInUse) {
			return fmt.Errorf("down: an agent is running with %s but its status socket does not answer: stop it first (%w)", dir, err)
		}
		return fmt.Errorf("down: %w", err)
	}
	fmt.Fprintf(stdout, "left the mesh: the device of %s is deleted at the service\n", dir)
	return nil
}

// onlineStr is a peer's presence for the status table.
func onlineStr(now time.Time, p mesh.PeerStatus) string {
	switch {
	case p.Online:
		return "yes"
	case p.LastSeen.IsZero():
		return "no"
	default:
		return "no, seen " + ago(now, p.LastSeen)
	}
}

// handshakePoll is how often the agent looks for new handshakes to print
// "peer up".
const handshakePoll = time.Second

// agentEvents prints what happens to the node until ctx ends or the node
// closes: members added, changed and gone, online and offline (as the
// service says), "peer up" once a handshake with a peer happened (the
// tunnel works, not merely listed), the service lost and regained, routes
// skipped.
func agentEvents(ctx context.Context, n *mesh.Node, w io.Writer) {
	events := n.Watch(ctx)
	st := n.Status()
	up := map[string]bool{} // peers (by key) with a handshake printed
	printUp := func(st mesh.Status) {
		for _, p := range st.Peers {
			k := p.PublicKey.String()
			if !p.LastHandshake.IsZero() && !up[k] {
				up[k] = true
				fmt.Fprintf(w, "peer up: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
			}
		}
	}
	for _, p := range st.Peers {
		fmt.Fprintf(w, "peer added: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	}
	printUp(st)
	printSkipped(w, nil, st.SkippedRoutes)
	skipped := st.SkippedRoutes
	t := time.NewTicker(handshakePoll)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			printUp(n.Status())
			continue
		case ev, ok := <-events:
			if !ok {
				return
			}
			printEvent(w, ev, up)
		}
		now := n.Status().SkippedRoutes
		printSkipped(w, skipped, now)
		skipped = now
	}
}

// printEvent prints one node event; a removed peer's handshake is
// forgotten in up.
func printEvent(w io.Writer, ev mesh.Event, up map[string]bool) {
	p := ev.Peer
	switch ev.Type {
	case mesh.PeerAdded:
		fmt.Fprintf(w, "peer added: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	case mesh.PeerUpdated:
		fmt.Fprintf(w, "peer changed: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	case mesh.PeerRemoved:
		delete(up, p.PublicKey.String())
		fmt.Fprintf(w, "peer gone: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	case mesh.PeerOnline:
		fmt.Fprintf(w, "peer online: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	case mesh.PeerOffline:
		fmt.Fprintf(w, "peer offline: %s %s\n", p.Hostname, joinAddrs(p.Addrs))
	case mesh.ControlLost:
		fmt.Fprintf(w, "lost the service (%v): the mesh keeps working with the known peers\n", ev.Err)
	case mesh.ControlRestored:
		fmt.Fprintf(w, "connected to the service\n")
	}
}

// leaveOrWait reports the node's events until ctx ends, the node closes,
// or `wiremesh down` asks it to leave (through srv: the node deletes its
// device and closes), then says how the agent ends. It reports whether
// the node left.
func leaveOrWait(ctx context.Context, n *mesh.Node, srv *statusServer, stop func(), w io.Writer, st mesh.Status) bool {
	var leaving atomic.Bool
	leaveDone := make(chan error, 1)
	if srv != nil {
		srv.setLeave(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
			defer cancel()
			leaving.Store(true)
			err := n.Leave(ctx)
			leaveDone <- err
			stop()
			return err
		})
	}
	agentEvents(ctx, n, w)
	left := leaving.Load() && <-leaveDone == nil
	switch {
	case left:
		fmt.Fprintf(w, "left the mesh: the device is deleted at the service\n")
	case st.Self.Ephemeral:
		fmt.Fprintf(w, "leaving (ephemeral: the device is deleted at the service)\n")
	default:
		fmt.Fprintf(w, "leaving (the node keeps its registration; 'wiremesh down' leaves for good)\n")
	}
	return left
}
