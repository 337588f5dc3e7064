package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// buildInfo describes this binary: its module version and, when built from
// a checkout, the commit.
type buildInfo struct {
	Version   string // module version, or "dev" for a local build
	Commit    string // VCS revision ("" if unknown)
	Time      string // commit time ("" if unknown)
	Modified  bool   // built from a checkout with uncommitted changes
	GoVersion string
}

// readBuildInfo reads the build information embedded by the Go toolchain.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: "dev", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		b.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// short is the one-word version: "v1.2.3", or "dev+abcdef123456[-dirty]".
func (b buildInfo) short() string {
	v := b.Version
	if v == "dev" && b.Commit != "" {
		c := b.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		v += "+" + c
		if b.Modified {
			v += "-dirty"
		}
	}
	return v
}

// runVersion implements `wiremesh version` (and --version).
func runVersion(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", stderr, "version")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("version: unexpected arguments %q", pos)
	}
	b := readBuildInfo()
	fmt.Fprintf(stdout, "wiremesh %s\n", b.short())
	if b.Commit != "" {
		fmt.Fprintf(stdout, "commit:  %s", b.Commit)
		if b.Time != "" {
			fmt.Fprintf(stdout, " (%s)", b.Time)
		}
		if b.Modified {
			fmt.Fprint(stdout, ", with uncommitted changes")
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "go:      %s %s/%s\n", b.GoVersion, runtime.GOOS, runtime.GOARCH)
	return nil
}
