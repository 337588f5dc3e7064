// Package measure is the harness both children of cmd/compare run: it
// takes one mesh implementation (a [System]) and measures, in one process,
// an idle mesh's heap, a pair's TCP transfer next to raw loopback TCP, and
// joins to the first echoed byte. The wiremesh child (cmd/compare itself)
// and the tsnet child (module bench/tsnet) differ only in their System.
package measure

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"time"
)

// System is one mesh implementation with its coordination service running
// in this process.
type System interface {
	// Join starts a member and returns once the implementation's join
	// (mesh.Join, tsnet.Server.Up) returned.
	Join(ctx context.Context, hostname string) (Member, error)
	// Leave closes m and, where the service can, deletes it there.
	Leave(ctx context.Context, m Member) error
	// Close stops the service.
	Close()
}

// Member is one node of a System.
type Member interface {
	// Addr is the member's IPv4 tunnel address.
	Addr() netip.Addr
	// Listen listens for TCP on port of the member's tunnel addresses.
	Listen(port uint16) (net.Listener, error)
	// Dial dials TCP to another member through the tunnel.
	Dial(ctx context.Context, to netip.AddrPort) (net.Conn, error)
	// Ready reports whether the member knows peers peers and has a working
	// path to each: a completed handshake (wiremesh) or a direct UDP path
	// (tsnet, which otherwise relays through DERP).
	Ready(ctx context.Context, peers int) bool
	// Idle reports whether the member is in its idle steady state with
	// peers peers: every handshake done (wiremesh, which handshakes with
	// every peer it is told about); every peer in the netmap (tsnet, which
	// configures a peer in WireGuard only once traffic flows).
	Idle(ctx context.Context, peers int) bool
	// Close stops the member.
	Close() error
}

// Config is what a child measures and for how long.
type Config struct {
	Duration time.Duration // each timed transfer
	Joins    int           // joins timed to the first echoed byte
	Idle     int           // members in the idle mesh

	// Profile, if set, is called with true before the pair's timed
	// transfer and with false after it.
	Profile func(on bool)
}

// Flags registers the flags that set a Config on fs (the runner passes
// them on to its children) and returns a function that reads them.
func Flags(fs *flag.FlagSet) func() Config {
	var c Config
	fs.DurationVar(&c.Duration, "duration", 3*time.Second, "length of each timed transfer")
	fs.IntVar(&c.Joins, "joins", 20, "joins timed to the first echoed byte, per child")
	fs.IntVar(&c.Idle, "idle", 8, "members of the idle mesh")
	return func() Config { return c }
}

// Args returns the command-line arguments that give a child c.
func (c Config) Args() []string {
	return []string{"-duration", c.Duration.String(), "-joins", fmt.Sprint(c.Joins), "-idle", fmt.Sprint(c.Idle)}
}

// Result is what one child reports to the runner, as JSON on stdout.
type Result struct {
	System string `json:"system"`

	// The pair's transfer and raw loopback TCP right before it: rate in
	// MB/s, process CPU time (user+system) per MiB moved in ms.
	RawMBps      float64 `json:"raw_MBps"`
	RawCPUPerMiB float64 `json:"raw_cpu_ms_per_MiB"`
	MBps         float64 `json:"MBps"`
	CPUPerMiB    float64 `json:"cpu_ms_per_MiB"`
	// Heaps of the pair, per member: (heap − settled heap before the two
	// joined) / 2; the peak sampled during the transfer, the settled heap
	// after it.
	PeakHeapMiB  float64 `json:"peak_heap_MiB_per_member"`
	AfterHeapMiB float64 `json:"heap_after_MiB_per_member"`

	// FirstByteMs are the joins, each from its start to the first byte
	// echoed by a member of the pair.
	FirstByteMs []float64 `json:"first_byte_ms"`
	// IdleHeapMiB is the settled heap growth of IdleMembers members that
	// know each other, per member (the service's share included).
	IdleHeapMiB float64 `json:"idle_heap_MiB_per_member"`
	IdleMembers int     `json:"idle_members"`
}

// ChildMain is a child's main: it reads the Config flags and -cpuprofile
// from args, measures the System newSys makes and writes the Result as
// JSON to stdout.
func ChildMain(name string, args []string, newSys func() (System, error)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	cfgOf := Flags(fs)
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the pair's timed transfer to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := cfgOf()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.Profile = func(on bool) {
			if on {
				_ = pprof.StartCPUProfile(f)
			} else {
				pprof.StopCPUProfile()
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := Run(ctx, name, newSys, cfg)
	if err != nil {
		return fmt.Errorf("%s child: %w", name, err)
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// Run measures the system newSys makes: after a warm-up member (the
// process's one-time costs are no member's), the idle mesh, then the pair's
// transfer next to raw loopback TCP and the joins. Each phase gets a fresh
// service.
func Run(ctx context.Context, name string, newSys func() (System, error), cfg Config) (Result, error) {
	res := Result{System: name, IdleMembers: cfg.Idle}
	phases := []struct {
		name string
		run  func(System) error
	}{
		{"warm-up", func(sys System) error {
			m, err := sys.Join(ctx, "warm-up")
			if err != nil {
				return err
			}
			return sys.Leave(ctx, m)
		}},
		{"idle", func(sys System) (err error) {
			res.IdleHeapMiB, err = idleHeap(ctx, sys, cfg.Idle)
			return err
		}},
		{"pair", func(sys System) error { return measurePair(ctx, sys, cfg, &res) }},
	}
	for _, p := range phases {
		sys, err := newSys()
		if err != nil {
			return res, fmt.Errorf("%s: %w", p.name, err)
		}
		err = p.run(sys)
		sys.Close()
		if err != nil {
			return res, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	return res, nil
}

// measurePair joins two members, streams from one to the other next to raw
// loopback TCP, then times joins of fresh members to the first byte echoed
// by the second.
func measurePair(ctx context.Context, sys System, cfg Config, res *Result) error {
	base := settledHeap()
	a, err := sys.Join(ctx, "a")
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := sys.Join(ctx, "b")
	if err != nil {
		return err
	}
	defer b.Close()
	ln, err := b.Listen(9000)
	if err != nil {
		return err
	}
	defer ln.Close()
	to := netip.AddrPortFrom(b.Addr(), 9000)
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return a.Dial(ctx, to)
	}
	// Warm up until both have their path (handshakes, the direct path,
	// buffer pools are not what is measured).
	if err := waitFor(ctx, "the pair's paths", func() bool {
		_, err := stream(dial, ln, 200*time.Millisecond)
		return err == nil && a.Ready(ctx, 1) && b.Ready(ctx, 1)
	}); err != nil {
		return err
	}
	raw, err := rawLoopback(cfg.Duration)
	if err != nil {
		return fmt.Errorf("raw loopback: %w", err)
	}
	if cfg.Profile != nil {
		cfg.Profile(true)
	}
	t, err := stream(dial, ln, cfg.Duration)
	if cfg.Profile != nil {
		cfg.Profile(false)
	}
	if err != nil {
		return err
	}
	after := settledHeap()
	res.RawMBps, res.RawCPUPerMiB = raw.MBps, raw.CPUPerMiB
	res.MBps, res.CPUPerMiB = t.MBps, t.CPUPerMiB
	res.PeakHeapMiB = mib(float64(t.PeakHeap)-float64(base)) / 2
	res.AfterHeapMiB = mib(float64(after)-float64(base)) / 2

	res.FirstByteMs, err = firstBytes(ctx, sys, b, cfg.Joins)
	return err
}

// firstBytes times n joins of fresh members, each from the call to join
// until the first byte echoed by echo; each member leaves before the next
// joins.
func firstBytes(ctx context.Context, sys System, echo Member, n int) ([]float64, error) {
	ln, err := echo.Listen(7)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	go serveEcho(ln)
	to := netip.AddrPortFrom(echo.Addr(), 7)
	var ms []float64
	for i := range n {
		start := time.Now()
		m, err := sys.Join(ctx, fmt.Sprintf("joiner-%d", i))
		if err != nil {
			return nil, err
		}
		err = echoOnce(ctx, m, to)
		took := time.Since(start)
		if lerr := sys.Leave(ctx, m); err == nil {
			err = lerr
		}
		if err != nil {
			return nil, fmt.Errorf("joiner %d: %w", i, err)
		}
		ms = append(ms, float64(took)/float64(time.Millisecond))
	}
	return ms, nil
}

// echoOnce dials to from m (again while the dial fails: a newcomer's peer
// may not know it yet), sends one byte and waits for it to come back.
func echoOnce(ctx context.Context, m Member, to netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := m.Dial(ctx, to)
		if err == nil {
			defer c.Close()
			if _, err := c.Write([]byte{42}); err != nil {
				return err
			}
			got := make([]byte, 1)
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if got[0] != 42 {
				return fmt.Errorf("echoed %d, sent 42", got[0])
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("dial %s: %w", to, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serveEcho echoes every connection accepted on ln until ln is closed.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// idleHeap joins n members, waits until each is ready with every other
// one, and returns the settled heap growth per member in MiB.
func idleHeap(ctx context.Context, sys System, n int) (float64, error) {
	base := settledHeap()
	var ms []Member
	defer func() {
		for _, m := range ms {
			m.Close()
		}
	}()
	for i := range n {
		m, err := sys.Join(ctx, fmt.Sprintf("idle-%d", i))
		if err != nil {
			return 0, err
		}
		ms = append(ms, m)
	}
	for _, m := range ms {
		if err := waitFor(ctx, "a full mesh", func() bool { return m.Idle(ctx, n-1) }); err != nil {
			return 0, err
		}
	}
	return mib(float64(settledHeap())-float64(base)) / float64(n), nil
}

// waitFor polls cond every 20 ms for up to two minutes.
func waitFor(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
