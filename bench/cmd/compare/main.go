// Command compare measures wiremesh against Tailscale's tsnet on this
// machine: two userspace members of each, every system in child processes
// of its own, interleaved (wiremesh, tsnet, wiremesh, tsnet, …), each child
// measuring raw loopback TCP in its own process as its baseline. It prints
// the medians over the rounds and the ratios between the two.
//
//	cd bench && go run ./cmd/compare
//
// The wiremesh child is this program run again with -child. The tsnet
// child is built from the module in ../tsnet (its own go.mod: tailscale.com
// needs a newer gVisor than wiremesh pins, so each system is built with
// the dependencies its own users get) into a temporary directory, with
// -tags ts_omit_captiveportal.
//
// Each child starts its system's coordination service in-process
// (wiremesh: meshtest; tsnet: tstest/integration/testcontrol with a DERP
// and a STUN server on 127.0.0.1) and measures (package measure):
//
//   - idle heap per member: -idle members that all know each other, the
//     settled heap growth divided by their number;
//   - a pair: one TCP stream of 128 KiB writes for -duration from one
//     member to another, and the same over raw loopback TCP right before:
//     rate, process CPU time (user+system, getrusage) per MiB, the peak
//     heap sampled during the transfer and the settled heap after it, per
//     member;
//   - join → first echoed byte: -joins fresh members, each timed from the
//     start of its join until a byte it sent came back from the second
//     member of the pair.
//
// Nothing leaves loopback: the tsnet child runs with log upload, port
// mapping and captive-portal detection off, against its local control and
// DERP servers (see bench/tsnet).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/wiremesh/wiremesh/bench/measure"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-child" {
		if os.Args[2] != "wiremesh" {
			fmt.Fprintf(os.Stderr, "compare: this binary's child is wiremesh, not %q\n", os.Args[2])
			os.Exit(2)
		}
		err := measure.ChildMain("wiremesh", os.Args[3:], func() (measure.System, error) { return newWiremesh() })
		if err != nil {
			fmt.Fprintf(os.Stderr, "compare: %v\n", err)
			os.Exit(1)
		}
		return
	}
	cfgOf := measure.Flags(flag.CommandLine)
	var (
		rounds   = flag.Int("rounds", 5, "rounds; each runs one wiremesh child and then one tsnet child")
		only     = flag.String("only", "", "run only this system's children (wiremesh or tsnet)")
		tsnetDir = flag.String("tsnet-module", "", "directory of the tsnet child's module (default: ./tsnet or ./bench/tsnet, whichever exists)")
		tsnetBin = flag.String("tsnet-child", "", "a tsnet child binary built before (skips the build)")
		asJSON   = flag.Bool("json", false, "also print every child's result as JSON")
	)
	flag.Parse()
	if err := run(cfgOf(), *rounds, *only, *tsnetDir, *tsnetBin, *asJSON); err != nil {
		fmt.Fprintf(os.Stderr, "compare: %v\n", err)
		os.Exit(1)
	}
}

func run(cfg measure.Config, rounds int, only, tsnetDir, tsnetBin string, asJSON bool) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	children := map[string][]string{"wiremesh": {self, "-child", "wiremesh"}}
	order := []string{"wiremesh", "tsnet"}
	if only != "" {
		order = []string{only}
	}
	for _, name := range order {
		switch name {
		case "wiremesh":
		case "tsnet":
			if tsnetBin == "" {
				tmp, err := os.MkdirTemp("", "compare-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(tmp)
				if tsnetBin, err = buildTsnetChild(tsnetDir, tmp); err != nil {
					return err
				}
			}
			children["tsnet"] = []string{tsnetBin}
		default:
			return fmt.Errorf("-only %q: wiremesh or tsnet", name)
		}
	}
	results := map[string][]measure.Result{}
	for r := range rounds {
		for _, name := range order {
			fmt.Fprintf(os.Stderr, "round %d/%d: %s\n", r+1, rounds, name)
			res, err := runChild(children[name], cfg)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, name, err)
			}
			results[name] = append(results[name], res)
		}
	}
	report(os.Stdout, results, cfg)
	if asJSON {
		return json.NewEncoder(os.Stdout).Encode(results)
	}
	return nil
}

// buildTsnetChild builds the tsnet child's module (found in dir, or
// ./tsnet or ./bench/tsnet when dir is empty) into tmp.
func buildTsnetChild(dir, tmp string) (string, error) {
	if dir == "" {
		for _, d := range []string{"tsnet", filepath.Join("bench", "tsnet")} {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dir = d
				break
			}
		}
		if dir == "" {
			return "", errors.New("no tsnet child module in ./tsnet or ./bench/tsnet: run from bench/ or set -tsnet-module")
		}
	}
	bin := filepath.Join(tmp, "tsnet-child")
	fmt.Fprintf(os.Stderr, "building the tsnet child in %s (the first build of tailscale.com takes minutes)\n", dir)
	cmd := exec.Command("go", "build", "-tags", "ts_omit_captiveportal", "-o", bin, ".")
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building the tsnet child: %w", err)
	}
	return bin, nil
}

// runChild runs one child and parses its result.
func runChild(argv []string, cfg measure.Config) (measure.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], cfg.Args()...)...)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return measure.Result{}, err
	}
	var res measure.Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return measure.Result{}, fmt.Errorf("child output %q: %w", stdout.String(), err)
	}
	return res, nil
}
