package main

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"

	"github.com/wiremesh/wiremesh/route"
)

// dockerFlag is `router --docker`: unset means auto, --docker forces the
// DOCKER-USER rules, --docker=false never adds them.
type dockerFlag struct{ set, on bool }

func (d *dockerFlag) String() string {
	if d == nil || !d.set {
		return "auto"
	}
	return strconv.FormatBool(d.on)
}

func (d *dockerFlag) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("want true or false, got %q", s)
	}
	d.set, d.on = true, b
	return nil
}

func (d *dockerFlag) IsBoolFlag() bool { return true }

// dockerRules inserts the DOCKER-USER rules of a kernel-mode router after
// mesh.Join: forced (--docker) for every child prefix, failing without the
// chain; automatic (no flag) only when the chain exists and only for the
// prefixes on a Docker bridge; never with --docker=false. nil: no rules.
func dockerRules(d dockerFlag, ifname string, children []netip.Prefix, stdout io.Writer, log *slog.Logger) (*route.DockerUser, error) {
	if (d.set && !d.on) || len(children) == 0 {
		return nil, nil
	}
	ps := children
	if !d.set {
		ok, err := route.DockerUserExists()
		if err != nil || !ok {
			return nil, nil
		}
		if ps, err = route.DockerBridgePrefixes(children); err != nil || len(ps) == 0 {
			return nil, err
		}
	}
	du, err := route.NewDockerUser(route.DockerUserConfig{Interface: ifname, Prefixes: ps}, route.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("--docker: %w", err)
	}
	fmt.Fprintf(stdout, "Docker: DOCKER-USER accepts %s traffic to %s\n", ifname, joinAddrs(du.Prefixes()))
	return du, nil
}
