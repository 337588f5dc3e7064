//go:build linux

package docker_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// node1 starts `wiremesh router` in the host's own namespace, next to the
// Docker engine, as the README runs it: kernel mode, the Docker network's
// subnet as child prefix, a state directory kept across restarts (same
// key, same registration, same tunnel address).
type node1 struct {
	bin  string
	args []string // all but --docker and the URL
	url  string   // the service, the CLI's positional argument
}

func newNode1(t *testing.T, wiremesh, url, token, ifname, socket string) *node1 {
	t.Helper()
	return &node1{bin: wiremesh, url: url, args: []string{"router",
		"--child-prefix", node1Prefix.String(), "--hostname", "node1", "--interface", ifname,
		"--state-dir", filepath.Join(t.TempDir(), "state"), "--socket", socket, "--token", token}}
}

// start starts the router with --docker (the DOCKER-USER rule) or with
// --docker=false (no rule, although the prefix is on a Docker bridge).
func (n *node1) start(t *testing.T, dockerRule bool) *hostProc {
	t.Helper()
	flag := "--docker=false"
	if dockerRule {
		flag = "--docker"
	}
	return startHost(t, n.bin, append(append([]string(nil), n.args...), flag, n.url)...)
}

// ready waits until p has joined and returns node1's tunnel address. With
// the rule, the router must have said so before it reported the join;
// without, it must not have mentioned Docker at all.
func (n *node1) ready(t *testing.T, p *hostProc, ifname string, dockerRule bool) netip.Addr {
	t.Helper()
	addr := joinedAddr(t, p.waitFor(t, "joined zone", time.Minute))
	if dockerRule {
		require.Contains(t, p.out.String(), "Docker: DOCKER-USER accepts "+ifname+" traffic to "+node1Prefix.String()+"\n")
	} else {
		require.NotContains(t, p.out.String(), "DOCKER-USER")
	}
	return addr
}
