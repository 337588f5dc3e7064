package netlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds one `go build`.
const buildTimeout = 10 * time.Minute

// builds caches BuildBinary results for the life of the test binary.
var builds struct {
	mu sync.Mutex // guards m
	m  map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// BuildBinary builds the main package pkg (an import path such as
// "github.com/wiremesh/wiremesh/cmd/wiremesh", or a path relative to the
// test's package directory) once per test binary and returns the
// executable's path. Later calls with the same pkg return the same path, or
// fail the same way. It skips t if `go` is not on PATH. The executables
// live in a temporary directory "netlab-bin-<pid>-*"; directories of test
// binaries that are gone are removed by later calls.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("needs the go tool: `go` not found on PATH; cannot build %s for end-to-end test %s", pkg, t.Name())
	}
	builds.mu.Lock()
	if builds.m == nil {
		builds.m = map[string]*build{}
	}
	b := builds.m[pkg]
	if b == nil {
		b = &build{}
		builds.m[pkg] = b
	}
	builds.mu.Unlock()

	b.once.Do(func() { b.path, b.err = goBuild(goTool, pkg) })
	if b.err != nil {
		t.Fatalf("netlab.BuildBinary: %v", b.err)
	}
	return b.path
}

func goBuild(goTool, pkg string) (string, error) {
	sweepBuildDirs()
	dir, err := os.MkdirTemp("", "netlab-bin-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		return "", fmt.Errorf("build %s: %w", pkg, err)
	}
	name := path.Base(filepath.ToSlash(strings.TrimSuffix(pkg, "/")))
	if name == "." || name == "/" || name == "" {
		name = "main"
	}
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	if b, err := exec.CommandContext(ctx, goTool, "build", "-o", out, pkg).CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return "", fmt.Errorf("go build -o %s %s: %v\n%s", out, pkg, err, b)
	}
	return out, nil
}

// sweepBuildDirs removes build directories of test binaries that have exited.
func sweepBuildDirs() {
	if runtime.GOOS != "linux" {
		return // liveness comes from /proc
	}
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), "netlab-bin-*-*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), "netlab-bin-")
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); os.IsNotExist(err) {
			_ = os.RemoveAll(m)
		}
	}
}
