package netlab

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DefaultStopGrace is how long [Proc.Stop] waits after SIGTERM before it
// sends SIGKILL.
const DefaultStopGrace = 5 * time.Second

// Proc is a background process running inside a [Host]'s namespace, in a
// process group of its own. Its stdout and stderr go, interleaved, to one
// buffer.
type Proc struct {
	host *Host
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed once the process has been reaped

	waitErr error // set before done is closed

	stopOnce sync.Once
	stopErr  error // result of the first Stop
}

// Start runs name with args in the background inside h's namespace (`ip
// netns exec`, which execs name in place, so the Proc's pid is name's).
// The process gets SIGKILL if the test binary dies. A cleanup on t stops it
// ([Proc.Stop]) and, if t failed or the process did not exit cleanly, logs
// its output; the lab's cleanup stops it too.
func (h *Host) Start(t testing.TB, name string, args ...string) *Proc {
	t.Helper()
	p := &Proc{
		host: h,
		name: name,
		out:  &syncBuffer{},
		done: make(chan struct{}),
	}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.SysProcAttr = sysProcAttr()
	p.cmd.WaitDelay = 2 * time.Second // children holding the output pipe cannot block Wait forever

	h.lab.mu.Lock()
	if h.lab.closed {
		h.lab.mu.Unlock()
		t.Fatalf("netlab: Start %s in %s: lab already torn down", name, h.name)
	}
	if err := p.cmd.Start(); err != nil {
		h.lab.mu.Unlock()
		t.Fatalf("netlab: Start %s in %s: %v", name, h.name, err)
	}
	h.lab.procs = append(h.lab.procs, p)
	h.lab.mu.Unlock()

	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		err := p.Stop()
		if err != nil || t.Failed() {
			out := p.Output()
			if out == "" {
				out = "(none)"
			}
			t.Logf("netlab: %s in %s (pid %d) stopped: %v; output:\n%s", name, h.name, p.Pid(), err, out)
		}
	})
	return p
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Output returns everything the process has written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stop is StopWithin(DefaultStopGrace).
func (p *Proc) Stop() error { return p.StopWithin(DefaultStopGrace) }

// StopWithin sends SIGTERM to the process group, waits up to grace for the
// process to exit, then sends SIGKILL. It returns nil only if the process
// exited with status 0 (before or after the SIGTERM); an error says how it
// ended otherwise. Only the first call acts; later calls return its result.
func (p *Proc) StopWithin(grace time.Duration) error {
	p.stopOnce.Do(func() { p.stopErr = p.stop(grace) })
	return p.stopErr
}

func (p *Proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.exitErr("had exited")
	default:
	}
	pgid := -p.cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.exitErr("exited after SIGTERM")
	case <-timer.C:
	}
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("netlab: %s in %s did not exit within %v of SIGTERM; killed: %w", p.name, p.host.name, grace, p.waitErr)
}

func (p *Proc) exitErr(how string) error {
	if p.waitErr == nil {
		return nil
	}
	return fmt.Errorf("netlab: %s in %s %s: %w", p.name, p.host.name, how, p.waitErr)
}

// WaitFor polls the output until a line contains substr and returns that
// line. It fails t (showing the output) when timeout passes first or the
// process exits without printing it.
func (p *Proc) WaitFor(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	line, err := p.waitFor(substr, timeout)
	if err != nil {
		t.Fatalf("%v; output:\n%s", err, p.Output())
	}
	return line
}

func (p *Proc) waitFor(substr string, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if line, ok := findLine(p.Output(), substr); ok {
			return line, nil
		}
		select {
		case <-p.done:
			if line, ok := findLine(p.Output(), substr); ok {
				return line, nil
			}
			how := "exited with status 0"
			if p.waitErr != nil {
				how = "exited (" + p.waitErr.Error() + ")"
			}
			return "", fmt.Errorf("netlab: %s in %s %s without printing %q", p.name, p.host.name, how, substr)
		case <-deadline.C:
			return "", fmt.Errorf("netlab: %s in %s printed no %q within %v", p.name, p.host.name, substr, timeout)
		case <-tick.C:
		}
	}
}

// findLine returns the first complete or partial line of out containing substr.
func findLine(out, substr string) (string, bool) {
	for line := range strings.SplitSeq(out, "\n") {
		if strings.Contains(line, substr) {
			return line, true
		}
	}
	return "", false
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
