package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// policyDeadline bounds how long a policy change may take to be enforced
// (set through the CLI, sent through the watch stream, put in the
// nftables rules). Not a speed goal: the time it took is logged.
const policyDeadline = 5 * time.Second

// peerReturnDeadline bounds how long a peer that re-enters a member's
// view (the policy that hid it is removed) takes to carry traffic: both
// sides see the other through a live upsert, so both hold back their
// first handshake (mesh holdDelay, 3 s) before initiating.
const peerReturnDeadline = 12 * time.Second

// blockedWait is how long a probe that must fail is given.
const blockedWait = 1500 * time.Millisecond

// TestPolicyEnforcedKernel is the scenario in network namespaces,
// in kernel mode: a zone policy lets the spoke (behind a NAT) reach
// 172.24.0.0/24 port 80 only. node1 routes 172.24.0.0/24 (172.24.0.10 on
// its lo, through nftables input, and a container behind a bridge,
// through forward); node2 routes 172.28.0.0/24.
func TestPolicyEnforcedKernel(t *testing.T) {
	lab := newSeedLab(t)
	bin, svc := lab.bin, lab.svc
	node1, container, node2, spoke := lab.node1, lab.container, lab.node2, lab.spoke

	ap := netip.MustParseAddrPort
	c80 := container.ServeTCP(t, ap("172.24.0.2:80"))
	c81 := container.ServeTCP(t, ap("172.24.0.2:81"))
	n80 := node1.ServeTCP(t, ap("172.24.0.10:80"))
	n81 := node1.ServeTCP(t, ap("172.24.0.10:81"))
	far := node2.ServeTCP(t, ap("172.28.0.10:80"))

	a1 := startAgent(t, bin, svc, node1, t.TempDir(), "172.24.0.0/24")
	startAgent(t, bin, svc, node2, t.TempDir(), "172.28.0.0/24")
	as := startAgent(t, bin, svc, spoke, t.TempDir())
	own := node1.ServeTCP(t, netip.AddrPortFrom(a1.addr, 7000)) // the router's own service
	status := func() statusFilter { return memberStatus(t, node1, bin, a1.socket) }

	// Without a policy everything is open.
	for _, dst := range []netip.AddrPort{c80, c81, n80, n81, far, own} {
		require.NoError(t, spoke.DialTCP(probeCtx(t), dst), "spoke -> %s without a policy", dst)
	}
	require.Nil(t, status().Filter)
	open := dialHeld(t, spoke, c80) // stays open across the policy changes

	start := time.Now()
	setPolicyCLI(t, svc, `{"rules": [
  {"from": ["spoke"], "to": ["172.24.0.0/24:80"], "proto": "tcp"}
]}`)
	waitFor(t, "node1 enforces the policy", func() bool {
		f := status().Filter
		return f != nil && len(f.Rules) == 1 && f.Rules[0].Ports[0] == "80"
	})
	t.Logf("node1's nftables hold policy 1 %v after `policy set` started", time.Since(start))
	waitUntil(t, "spoke loses 172.24.0.0/24 port 81", policyDeadline, func() bool { return blocked(spoke, c81) })
	open.stillOpen(t)
	for _, dst := range []netip.AddrPort{c80, n80} {
		require.NoError(t, spoke.DialTCP(probeCtx(t), dst), "spoke -> %s: allowed", dst)
	}
	for _, dst := range []netip.AddrPort{c81, n81, far, own} {
		require.True(t, blocked(spoke, dst), "spoke -> %s opened, want refused or dropped", dst)
	}
	for _, dst := range []netip.Addr{addr("172.24.0.2"), addr("172.24.0.10"), a1.addr, addr("172.28.0.10")} {
		require.Error(t, spoke.Ping(probeCtxFor(t, blockedWait), dst), "spoke pinged %s, want lost", dst)
	}
	f := status().Filter
	require.Equal(t, 1, f.Rules[0].Rule)
	require.Equal(t, "tcp", f.Rules[0].Proto)
	require.Equal(t, []string{"172.24.0.0/24"}, f.Rules[0].Dst)
	require.Positive(t, f.Rules[0].Accepted, "the rule counted the port-80 connections")
	require.Positive(t, f.Dropped, "the drop counted port 81, the router's own port and the pings")
	t.Logf("node1's filter: %+v", f)

	// Port 81 and the router's own service open, port 80 closes: the
	// connection already open on port 80 keeps working.
	start = time.Now()
	setPolicyCLI(t, svc, fmt.Sprintf(`{"rules": [
  {"from": ["spoke"], "to": ["172.24.0.0/24:81"], "proto": "tcp"},
  {"from": ["spoke"], "to": ["node1:%d"], "proto": "tcp"}
]}`, own.Port()))
	waitUntil(t, "spoke reaches 172.24.0.0/24 port 81", policyDeadline, func() bool { return reaches(spoke, c81) })
	t.Logf("policy 2 enforced %v after `policy set` started", time.Since(start))
	open.stillOpen(t)
	for _, dst := range []netip.AddrPort{c81, n81, own} {
		require.NoError(t, spoke.DialTCP(probeCtx(t), dst), "spoke -> %s: allowed", dst)
	}
	for _, dst := range []netip.AddrPort{c80, n80, far} {
		require.True(t, blocked(spoke, dst), "spoke -> %s opened, want refused or dropped", dst)
	}
	open.stillOpen(t)

	// Removing the policy opens everything again.
	start = time.Now()
	svc.admin(t, "policy", "delete", "--zone", "default")
	waitFor(t, "node2 back in the spoke's view", func() bool {
		return memberStatus(t, spoke, bin, as.socket).peer("node2") != nil
	})
	t.Logf("node2 back in the spoke's view %v after `policy delete` started", time.Since(start))
	waitUntil(t, "spoke reaches 172.28.0.0/24 again", peerReturnDeadline, func() bool { return reaches(spoke, far) })
	t.Logf("spoke reaches node2's prefix %v after `policy delete` started", time.Since(start))
	for _, dst := range []netip.AddrPort{c80, c81, n80, n81, own} {
		require.NoError(t, spoke.DialTCP(probeCtx(t), dst), "spoke -> %s without a policy", dst)
	}
	require.NoError(t, spoke.Ping(probeCtx(t), addr("172.24.0.2")))
	require.NoError(t, spoke.Ping(probeCtx(t), a1.addr))
	waitFor(t, "node1 drops its filter", func() bool { return status().Filter == nil })
	open.stillOpen(t)
}

// setPolicyCLI sets the default zone's policy with `wiremesh policy set`.
func setPolicyCLI(t *testing.T, s *service, doc string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "policy.json")
	require.NoError(t, os.WriteFile(file, []byte(doc), 0o600))
	out := s.admin(t, "policy", "set", "--zone", "default", file)
	require.Contains(t, out, "policy of zone \"default\" set")
}

// statusFilter is the part of `wiremesh status --json` this test reads.
type statusFilter struct {
	Peers []struct {
		Hostname      string     `json:"hostname"`
		LastHandshake *time.Time `json:"last_handshake"`
	} `json:"peers"`
	Filter *struct {
		Rules []struct {
			Rule     int      `json:"rule"`
			Src      []string `json:"src"`
			Dst      []string `json:"dst"`
			Proto    string   `json:"proto"`
			Ports    []string `json:"ports"`
			Accepted uint64   `json:"accepted"`
		} `json:"rules"`
		Dropped uint64 `json:"dropped"`
	} `json:"filter"`
}

// peer returns the handshake time of the peer named hostname (the zero
// time before the first handshake), nil when it is not a peer.
func (st statusFilter) peer(hostname string) *time.Time {
	for _, p := range st.Peers {
		if p.Hostname == hostname {
			if p.LastHandshake == nil {
				return new(time.Time)
			}
			return p.LastHandshake
		}
	}
	return nil
}

func memberStatus(t *testing.T, h *netlab.Host, bin, socket string) statusFilter {
	t.Helper()
	out := h.MustRun(t, bin, "status", "--json", "--socket", socket)
	var st statusFilter
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	return st
}

// blocked reports whether no TCP connection from h to dst opens within
// blockedWait (refused, or its SYN dropped).
func blocked(h *netlab.Host, dst netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(context.Background(), blockedWait)
	defer cancel()
	return h.DialTCP(ctx, dst) != nil
}

// reaches reports whether a TCP exchange from h to dst works within 500ms.
func reaches(h *netlab.Host, dst netip.AddrPort) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	return h.DialTCP(ctx, dst) == nil
}

// waitUntil polls cond until it holds, failing after d.
func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// heldConn is a TCP connection to a netlab server kept open across
// changes.
type heldConn struct {
	c net.Conn
	r *bufio.Reader
	n int
}

func dialHeld(t *testing.T, h *netlab.Host, dst netip.AddrPort) *heldConn {
	t.Helper()
	var c net.Conn
	require.NoError(t, h.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(probeCtx(t), "tcp", dst.String())
		return err
	}))
	t.Cleanup(func() { c.Close() })
	hc := &heldConn{c: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(probeTimeout))
	_, err := hc.r.ReadString('\n') // the banner
	require.NoError(t, err)
	hc.stillOpen(t)
	return hc
}

// stillOpen checks that a line written on the connection comes back.
func (hc *heldConn) stillOpen(t *testing.T) {
	t.Helper()
	hc.n++
	msg := fmt.Sprintf("line %d\n", hc.n)
	hc.c.SetDeadline(time.Now().Add(probeTimeout))
	_, err := io.WriteString(hc.c, msg)
	require.NoError(t, err)
	got, err := hc.r.ReadString('\n')
	require.NoError(t, err, "the connection opened before the change broke")
	require.Equal(t, msg, got)
}
