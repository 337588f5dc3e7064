package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// StateDir holds one file per live run, named by its run id and holding
	// "<pid> <start time>" of the owning process.
	StateDir = "/run/wiremesh-netlab"
	// netnsDir is where `ip netns add` bind-mounts named namespaces.
	netnsDir = "/run/netns"
	// cmdTimeout bounds every `ip`/`nft` invocation made by the harness.
	cmdTimeout = 30 * time.Second
)

// nsPattern matches the namespaces of any run; the group is the run id.
var nsPattern = regexp.MustCompile(`^wm([0-9a-f]{6})-`)

// namePattern is what Host and Switch names must look like: short enough
// that interface names derived from them (plus a numeric suffix) fit in
// IFNAMSIZ.
var namePattern = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)

const maxNameLen = 12

// RequireRoot skips the test unless it can build network namespaces: it
// needs Linux, uid 0 and iproute2's `ip` on PATH. The skip message starts
// with "needs root: " (or "needs Linux: ", "needs iproute2: ") and says
// what is skipped.
func RequireRoot(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("needs Linux: netlab builds network namespaces; skipping privileged end-to-end test %s", t.Name())
	}
	if os.Geteuid() != 0 {
		t.Skipf("needs root: netlab builds network namespaces, veths, bridges and nftables tables; skipping privileged end-to-end test %s (run it as root)", t.Name())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("needs iproute2: `ip` not found on PATH; skipping privileged end-to-end test %s", t.Name())
	}
}

// RequireTUN skips the test unless /dev/net/tun exists (kernel-mode nodes
// need it). Call it after [RequireRoot].
func RequireTUN(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("needs /dev/net/tun: %v; skipping kernel-mode end-to-end test %s", err, t.Name())
	}
}

// Lab is one test's set of namespaces, links and processes. Its methods
// that build things fail the test (t.Fatal) on error, so they must be
// called from the test's goroutine.
type Lab struct {
	t      testing.TB
	id     string // six hex digits
	prefix string // "wm<id>-", the prefix of every namespace name

	mu sync.Mutex // guards the fields below
	// nodes maps a Host or Switch name to its namespace, in creation order.
	nodes  map[string]*Host
	order  []*Host
	procs  []*Proc
	closed bool
}

// New makes an empty lab and registers a cleanup on t that removes all it
// made. It skips the test when [RequireRoot] would, and first sweeps
// leftovers of earlier runs whose process is gone.
func New(t testing.TB) *Lab {
	t.Helper()
	RequireRoot(t)
	for _, msg := range Sweep() {
		t.Logf("netlab: %s", msg)
	}
	id, err := claimRunID()
	if err != nil {
		t.Fatalf("netlab.New: %v", err)
	}
	l := &Lab{t: t, id: id, prefix: "wm" + id + "-", nodes: map[string]*Host{}}
	t.Cleanup(l.teardown)
	return l
}

// ID returns the run id (six hex digits) carried by every namespace name.
func (l *Lab) ID() string { return l.id }

// NamePrefix returns "wm<run id>-", the prefix of every namespace name.
func (l *Lab) NamePrefix() string { return l.prefix }

// Host makes a namespace "wm<id>-<name>" with lo up. name must be a
// lowercase DNS-like label of at most 12 characters, unique in the lab.
func (l *Lab) Host(name string) *Host {
	l.t.Helper()
	h, err := l.newNode(name)
	if err != nil {
		l.t.Fatalf("netlab: Host %q: %v", name, err)
	}
	return h
}

func (l *Lab) newNode(name string) (*Host, error) {
	if len(name) > maxNameLen || !namePattern.MatchString(name) {
		return nil, fmt.Errorf("invalid name %q: want a lowercase label like \"node1\" of at most %d characters", name, maxNameLen)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, errors.New("lab already torn down")
	}
	if _, dup := l.nodes[name]; dup {
		l.mu.Unlock()
		return nil, fmt.Errorf("name %q already used in this lab", name)
	}
	h := &Host{lab: l, name: name, ns: l.prefix + name, devs: map[string]bool{"lo": true}}
	l.nodes[name] = h
	l.order = append(l.order, h)
	l.mu.Unlock()

	if out, err := runCmd(context.Background(), "ip", "netns", "add", h.ns); err != nil {
		// Never delete a namespace we failed to create: it may be someone else's.
		l.mu.Lock()
		delete(l.nodes, name)
		l.order = slices.DeleteFunc(l.order, func(x *Host) bool { return x == h })
		l.mu.Unlock()
		return nil, fmt.Errorf("ip netns add %s: %v: %s", h.ns, err, out)
	}
	if err := h.ip("link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	// A plain host: no forwarding (namespaces inherit the init namespace's
	// value), loose reverse-path filtering, no bridge netfilter.
	settings := []struct {
		key, val string
		optional bool
	}{
		{"net/ipv4/ip_forward", "0", false},
		{"net/ipv4/conf/all/rp_filter", "2", false},
		{"net/ipv4/conf/default/rp_filter", "2", false},
		{"net/bridge/bridge-nf-call-iptables", "0", true},
		{"net/bridge/bridge-nf-call-ip6tables", "0", true},
		{"net/bridge/bridge-nf-call-arptables", "0", true},
	}
	for _, s := range settings {
		if err := h.sysctl(s.key, s.val); err != nil && !(s.optional && errors.Is(err, os.ErrNotExist)) {
			return nil, err
		}
	}
	return h, nil
}

// teardown stops every process and deletes every namespace of the lab.
// Failures are test errors: a lab that leaves something behind is a bug.
func (l *Lab) teardown() {
	l.mu.Lock()
	l.closed = true
	procs := slices.Clone(l.procs)
	nodes := slices.Clone(l.order)
	l.mu.Unlock()

	for i := len(procs) - 1; i >= 0; i-- {
		_ = procs[i].Stop() // its own cleanup reports the result
	}
	for i := len(nodes) - 1; i >= 0; i-- {
		if err := removeNamespace(nodes[i].ns); err != nil {
			l.t.Errorf("netlab: cleanup: %v", err)
		}
	}
	if err := os.Remove(filepath.Join(StateDir, l.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.t.Errorf("netlab: cleanup: %v", err)
	}
	left, err := Leftovers(l.id)
	if err != nil {
		l.t.Errorf("netlab: cleanup: %v", err)
	}
	if len(left) > 0 {
		l.t.Errorf("netlab: cleanup of run %s left behind: %s", l.id, strings.Join(left, ", "))
	}
}

// removeNamespace kills every process still inside the named namespace,
// waits (bounded) for them to go and deletes the namespace. A missing
// namespace is not an error.
func removeNamespace(ns string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := runCmd(ctx, "ip", "netns", "pids", ns)
		if err != nil {
			return fmt.Errorf("ip netns pids %s: %v: %s", ns, err, out)
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("remove namespace %s: processes %v survive SIGKILL", ns, pids)
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 0 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond) // poll interval while the kernel reaps them
	}
	if out, err := runCmd(ctx, "ip", "netns", "del", ns); err != nil {
		if _, serr := os.Stat(filepath.Join(netnsDir, ns)); errors.Is(serr, os.ErrNotExist) {
			return nil // deleted concurrently (another run's sweep)
		}
		return fmt.Errorf("ip netns del %s: %v: %s", ns, err, out)
	}
	return nil
}

// Leftovers lists what of run id still exists: namespaces under /run/netns
// and links in the caller's namespace whose name contains "wm<id>". A lab
// creates nothing in the caller's namespace; the link check guards that.
func Leftovers(id string) ([]string, error) {
	var left []string
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("netlab.Leftovers: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "wm"+id+"-") {
			left = append(left, "namespace "+e.Name())
		}
	}
	out, err := runCmd(context.Background(), "ip", "-o", "link", "show")
	if err != nil {
		return nil, fmt.Errorf("netlab.Leftovers: ip link show: %v: %s", err, out)
	}
	for _, name := range parseLinkNames(out) {
		if strings.Contains(name, "wm"+id) {
			left = append(left, "link "+name)
		}
	}
	return left, nil
}

// claimRunID picks a fresh run id and records this process as its owner.
func claimRunID() (string, error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return "", fmt.Errorf("claim run id: %w", err)
	}
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return "", fmt.Errorf("claim run id: %w", err)
	}
	for range 100 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("claim run id: %w", err)
		}
		id := hex.EncodeToString(b[:])
		f, err := os.OpenFile(filepath.Join(StateDir, id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("claim run id: %w", err)
		}
		_, werr := fmt.Fprintf(f, "%d %d\n", os.Getpid(), start)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(f.Name())
			return "", fmt.Errorf("claim run id: %w", werr)
		}
		return id, nil
	}
	return "", errors.New("claim run id: no free id after 100 tries")
}

// procStartTime returns field 22 of /proc/<pid>/stat (start time in clock
// ticks since boot), which tells a live owner from a reused pid.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // fields after ')' start at field 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	return strconv.ParseUint(fields[startField], 10, 64)
}

// runAlive reports whether the state file of run id names a live process.
// A missing or unreadable file means "not alive".
func runAlive(id string) bool {
	b, err := os.ReadFile(filepath.Join(StateDir, id))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return false
	}
	now, err := procStartTime(pid)
	return err == nil && now == start
}

// Sweep removes leftovers of runs whose owning process is gone: namespaces
// "wm<id>-*" (after killing what runs in them) and their state files. A
// namespace of a run with no state file at all is a leftover too: a run
// writes its state file before its first namespace and deletes it after its
// last. It returns one message per removed (or failed) item. [New] calls it.
func Sweep() []string {
	var msgs []string
	dead := map[string]bool{}
	if entries, err := os.ReadDir(StateDir); err == nil {
		for _, e := range entries {
			if len(e.Name()) == 6 && !runAlive(e.Name()) {
				dead[e.Name()] = true
			}
		}
	}
	if entries, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range entries {
			m := nsPattern.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			id := m[1]
			if !dead[id] {
				// Decide now, not from a listing made earlier: a run that
				// started meanwhile has its state file by now.
				if _, err := os.Stat(filepath.Join(StateDir, id)); err == nil {
					continue
				}
			}
			if err := removeNamespace(e.Name()); err != nil {
				msgs = append(msgs, fmt.Sprintf("sweep of dead run %s: %v", id, err))
				continue
			}
			msgs = append(msgs, fmt.Sprintf("swept namespace %s of dead run %s", e.Name(), id))
		}
	}
	for id := range dead {
		if err := os.Remove(filepath.Join(StateDir, id)); err == nil {
			msgs = append(msgs, fmt.Sprintf("swept state file of dead run %s", id))
		}
	}
	slices.Sort(msgs)
	return msgs
}

// runCmd runs a command in the caller's namespace with a timeout and
// returns its combined output.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// parseLinkNames extracts interface names from `ip -o link show` output
// ("3: veth0@if2: <...> ..."), without the "@peer" suffix.
func parseLinkNames(out []byte) []string {
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasSuffix(f[0], ":") {
			continue
		}
		name := strings.TrimSuffix(f[1], ":")
		if i := strings.IndexByte(name, '@'); i >= 0 {
			name = name[:i]
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
