//go:build linux

package docker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"

	"github.com/wiremesh/wiremesh/route"
)

// NotesEnv names a file to which a skipped run appends its "docker test
// did not run: ..." line, so that a CI script can print it (go test hides
// the output of passing packages).
const NotesEnv = "WIREMESH_TEST_NOTES"

// notRun skips t with a message starting "docker test did not run: " and
// appends the same line to $WIREMESH_TEST_NOTES when set.
func notRun(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := "docker test did not run: " + fmt.Sprintf(format, args...)
	if path := os.Getenv(NotesEnv); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err == nil {
			fmt.Fprintln(f, msg)
			f.Close()
		}
	}
	t.Skip(msg)
}

// requireDocker skips the test (see notRun) unless it runs as root on
// Linux with a TUN device and a Docker engine that answers `docker info`.
func requireDocker(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		notRun(t, "no docker command on PATH")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) == "" {
		notRun(t, "no Docker engine answers `docker info`: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if os.Geteuid() != 0 {
		notRun(t, "Docker engine %s answers, but the test needs root (network namespaces, a TUN device, DOCKER-USER rules)", strings.TrimSpace(string(out)))
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			notRun(t, "Docker engine answers, but %s is not on PATH", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		notRun(t, "Docker engine answers, but there is no /dev/net/tun: %v", err)
	}
	t.Logf("Docker engine %s", strings.TrimSpace(string(out)))
}

// hostLockPath serialises runs of this test on one host: they use fixed
// prefixes (172.24.0.0/24 on the host) that cannot exist twice.
const hostLockPath = "/run/wiremesh-docker-e2e.lock"

// lockHost takes the host-wide lock, waiting up to 10 minutes, and
// releases it in a cleanup. The kernel drops it if the process dies.
func lockHost(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(hostLockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatalf("lock %s: %v", hostLockPath, err)
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			t.Fatalf("lock %s (another run of this test holds it?): %v", hostLockPath, err)
		}
		time.Sleep(500 * time.Millisecond) // poll interval while another run finishes
	}
	t.Cleanup(func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	})
}

// runNamePattern matches the names this test gives to what it makes in the
// host's namespace and in Docker: "wm<run id>-...", "wm<run id>d" (the
// router's TUN device), "wm<run id>v" (the veth to the lab).
var runNamePattern = regexp.MustCompile(`^wm[0-9a-f]{6}(-|d$|v$)`)

// tunPattern matches the TUN device names of any run.
var tunPattern = regexp.MustCompile(`^wm[0-9a-f]{6}d$`)

// docker runs the docker command with a timeout and returns its trimmed
// output.
func docker(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

// leftovers lists what runs of this test made and did not remove:
// containers, networks and images named after a run, host links, nftables
// tables of a run's router, DOCKER-USER rules of a run's router. With
// only, just that run's.
func leftovers(only string) ([]string, error) {
	match := func(name string) bool {
		return runNamePattern.MatchString(name) && (only == "" || strings.HasPrefix(name, "wm"+only))
	}
	var left []string
	ctx := context.Background()
	for _, q := range []struct {
		what string
		args []string
	}{
		{"container", []string{"ps", "--all", "--format", "{{.Names}}"}},
		{"network", []string{"network", "ls", "--format", "{{.Name}}"}},
		{"image", []string{"images", "--format", "{{.Repository}}"}},
	} {
		out, err := docker(ctx, q.args...)
		if err != nil {
			return nil, err
		}
		for _, name := range strings.Fields(out) {
			if match(name) {
				left = append(left, q.what+" "+name)
			}
		}
	}
	links, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("ip link show: %w", err)
	}
	for _, line := range strings.Split(string(links), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if match(name) {
				left = append(left, "link "+name)
			}
		}
	}
	ifnames, tables, err := routerLeftovers()
	if err != nil {
		return nil, err
	}
	for _, n := range ifnames {
		if match(n) {
			left = append(left, "DOCKER-USER rule of "+n)
		}
	}
	for _, n := range tables {
		if match(n) {
			left = append(left, "nftables table inet wiremesh-"+n)
		}
	}
	return left, nil
}

// routerLeftovers returns the interfaces of runs that have DOCKER-USER
// rules (tagged "wiremesh:<ifname>:") and those that have a table inet
// wiremesh-<ifname>.
func routerLeftovers() (rules, tables []string, err error) {
	conn, err := nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables: %w", err)
	}
	ts, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, nil, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, tb := range ts {
		if n, ok := strings.CutPrefix(tb.Name, route.DefaultTableName+"-"); ok && tunPattern.MatchString(n) {
			tables = append(tables, n)
		}
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nil, fmt.Errorf("list nftables chains: %w", err)
	}
	seen := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name != "filter" || c.Name != route.DockerUserChain {
			continue
		}
		rs, err := conn.GetRules(c.Table, c)
		if err != nil {
			return nil, nil, fmt.Errorf("list DOCKER-USER rules: %w", err)
		}
		for _, r := range rs {
			rest, ok := strings.CutPrefix(comment(r), "wiremesh:")
			if !ok {
				continue
			}
			if n, _, _ := strings.Cut(rest, ":"); tunPattern.MatchString(n) && !seen[n] {
				seen[n] = true
				rules = append(rules, n)
			}
		}
	}
	return rules, tables, nil
}

func comment(r *nftables.Rule) string {
	if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
		return c
	}
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Match); ok && m.Name == "comment" {
			if c, ok := m.Info.(*xt.Comment); ok {
				return string(*c)
			}
		}
	}
	return ""
}

// sweep removes what dead runs left behind. It must hold the host lock:
// then every run-named object belongs to a run that is gone.
func sweep(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	left, err := leftovers("")
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	for _, item := range left {
		what, name, _ := strings.Cut(item, " ")
		var err error
		switch what {
		case "container":
			_, err = docker(ctx, "rm", "--force", name)
		case "network":
			_, err = docker(ctx, "network", "rm", name)
		case "image":
			_, err = docker(ctx, "rmi", "--force", name)
		case "link":
			err = exec.Command("ip", "link", "del", name).Run()
		case "DOCKER-USER":
			n := strings.TrimPrefix(item, "DOCKER-USER rule of ")
			_, err = route.CleanupDockerUser(n)
		case "nftables":
			err = route.CleanupLeftovers(strings.TrimPrefix(item, "nftables table inet wiremesh-"), "")
		}
		if err != nil {
			t.Fatalf("sweep of a dead run's %s: %v", item, err)
		}
		t.Logf("swept a dead run's %s", item)
	}
}

// checkHostFree fails the test when the host already routes one of ps:
// the test would mix its traffic with the host's real networks.
func checkHostFree(t *testing.T, ps ...netip.Prefix) {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route show: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unreachable" || dst == "blackhole" || dst == "prohibit" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		r, err := netip.ParsePrefix(dst)
		if err != nil {
			continue
		}
		for _, p := range ps {
			if r.Overlaps(p) {
				t.Fatalf("the host already routes %s (%q), which overlaps %s used by this test; remove it or run the test on another machine", r, line, p)
			}
		}
	}
}

// hostProc is a process in the host's own namespace (the router of node1,
// next to the Docker engine), in a process group of its own, killed if
// the test binary dies.
type hostProc struct {
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
	err  error // set before done is closed
}

// startHost starts name with args and stops it (SIGTERM, then SIGKILL after
// 10 s) in a cleanup, logging its output if the test failed.
func startHost(t *testing.T, name string, args ...string) *hostProc {
	t.Helper()
	p := &hostProc{done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 2 * time.Second
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(); err != nil || t.Failed() {
			t.Logf("%s on the host stopped: %v; output:\n%s", name, err, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM to the group, waits up to 10 s, then kills it. It
// returns nil only when the process exited with status 0.
func (p *hostProc) stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("did not exit within 10s of SIGTERM; killed: %w", p.err)
}

// waitFor polls the output for a line containing substr and returns it.
func (p *hostProc) waitFor(t *testing.T, substr string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(p.out.String(), "\n") {
			if strings.Contains(line, substr) {
				return line
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) without printing %q; output:\n%s", p.cmd.Path, p.err, substr, p.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s printed no %q within %v; output:\n%s", p.cmd.Path, substr, timeout, p.out.String())
		}
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
