// Command tsnet is the tsnet child of bench/cmd/compare: it measures two
// tsnet members (and an idle mesh, and joins) with package measure and
// prints the result as JSON. The runner builds and starts it; alone:
//
//	go build -tags ts_omit_captiveportal -o /tmp/tsnet-child . && /tmp/tsnet-child -duration 3s
//
// It starts itself again with tsnetEnv in its environment when that is
// missing: tailscale.com reads these variables while its packages
// initialise, before main runs.
//
// It is a module of its own: tailscale.com requires a newer gVisor than
// wiremesh pins, and wiremesh's module graph must never contain
// tailscale.com.
package main

import (
	"fmt"
	"os"
	"syscall"

	"github.com/wiremesh/wiremesh/bench/measure"
)

func main() {
	if !envSet() {
		self, err := os.Executable()
		if err == nil {
			err = syscall.Exec(self, os.Args, append(os.Environ(), tsnetEnv...))
		}
		fmt.Fprintf(os.Stderr, "tsnet child: starting again with its environment: %v\n", err)
		os.Exit(1)
	}
	if err := measure.ChildMain("tsnet", os.Args[1:], func() (measure.System, error) { return newTsnet() }); err != nil {
		fmt.Fprintf(os.Stderr, "tsnet child: %v\n", err)
		os.Exit(1)
	}
}
