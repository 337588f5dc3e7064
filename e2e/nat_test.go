package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/internal/netlab"
	"github.com/wiremesh/wiremesh/mesh"
)

// natMember is an agent behind a NAT router of its own.
type natMember struct {
	*agent
	nat  *netlab.Host
	kind netlab.NATKind
}

// behindNAT makes a host behind a NAT of the given kind on the WAN: LAN
// 10.i.0.0/24, NAT at 192.0.2.(20+i).
func behindNAT(l *netlab.Lab, wan *netlab.Switch, name string, i byte, kind netlab.NATKind) (*netlab.Host, *netlab.Host) {
	nat := l.Host("nat-" + name)
	l.Connect(nat, wan, netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, 20 + i}), 24))
	h := l.Host(name)
	l.Wire(h, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, i, 0, 2}), 24), nat, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, i, 0, 1}), 24))
	h.DefaultRoute(netip.AddrFrom4([4]byte{10, i, 0, 1}))
	nat.NAT("wan", kind)
	return h, nat
}

// natStatus is the part of `wiremesh status --json` (docs/STATUS-JSON.md)
// these tests read.
type natStatus struct {
	Self struct {
		NAT   *string `json:"nat"`
		Relay bool    `json:"relay"`
	} `json:"self"`
	Peers []struct {
		Hostname string  `json:"hostname"`
		Path     *string `json:"path"`
		Endpoint *string `json:"endpoint"`
	} `json:"peers"`
}

// nat returns the NAT kind the member learned ("" when unknown).
func (s natStatus) nat() string {
	if s.Self.NAT == nil {
		return ""
	}
	return *s.Self.NAT
}

// status reads an agent's status.
func (a *agent) status(t *testing.T, bin string) natStatus {
	t.Helper()
	var st natStatus
	require.NoError(t, json.Unmarshal([]byte(a.host.MustRun(t, bin, "status", "--json", "--socket", a.socket)), &st))
	return st
}

// pathTo returns how a sends to the peer named name, and the endpoint.
func (a *agent) pathTo(t *testing.T, bin, name string) (string, netip.AddrPort) {
	t.Helper()
	for _, p := range a.status(t, bin).Peers {
		if p.Hostname != name {
			continue
		}
		var path string
		var ep netip.AddrPort
		if p.Path != nil {
			path = *p.Path
		}
		if p.Endpoint != nil {
			ep, _ = netip.ParseAddrPort(*p.Endpoint)
		}
		return path, ep
	}
	return "", netip.AddrPort{}
}

// waitPath waits until a's path to b is want (both directions when both).
func waitPath(t *testing.T, bin string, a, b *natMember, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		p1, _ := a.pathTo(t, bin, b.name)
		p2, _ := b.pathTo(t, bin, a.name)
		if p1 == want && p2 == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("path %s<->%s: %q/%q after %v, want %q\n%s\n%s", a.name, b.name, p1, p2, within, want,
				a.host.MustRun(t, bin, "status", "--socket", a.socket), b.host.MustRun(t, bin, "status", "--socket", b.socket))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNATTraversal: members each behind their own NAT. Two
// endpoint-independent NATs connect directly (hole punching); two
// symmetric NATs, and a network without UDP, go through the service's
// relay (the last over TCP). Every pair exchanges ping and TCP both ways.
// Then the UDP block lifts and that member moves to direct paths, and a
// NAT that forgets its mappings does not cut its member off.
func TestNATTraversal(t *testing.T) {
	lab := newWANLab(t, "--stun-listen=192.0.2.1:3478")
	l, wan, bin, svc := lab.Lab, lab.wan, lab.bin, lab.svc

	specs := []struct {
		name string
		kind netlab.NATKind
	}{
		{"ei1", netlab.NATEndpointIndependent},
		{"ei2", netlab.NATEndpointIndependent},
		{"sym1", netlab.NATSymmetric},
		{"sym2", netlab.NATSymmetric},
		{"noudp", netlab.NATNoUDP},
	}
	ms := map[string]*natMember{}
	var members []*natMember
	for i, s := range specs {
		h, nat := behindNAT(l, wan, s.name, byte(i+1), s.kind)
		m := &natMember{agent: startAgent(t, bin, svc, h, t.TempDir()), nat: nat, kind: s.kind}
		ms[s.name] = m
		members = append(members, m)
	}
	targets := map[string]netip.AddrPort{}
	for _, m := range members {
		targets[m.name] = m.host.ServeTCP(t, netip.AddrPortFrom(m.addr, 7001))
	}

	t.Run("every pair exchanges ping and TCP both ways", func(t *testing.T) {
		for _, a := range members {
			for _, b := range members {
				if a == b {
					continue
				}
				require.NoError(t, a.host.Ping(probeCtx(t), b.addr), "%s pings %s", a.name, b.name)
				bn, err := a.host.DialTCPBanner(probeCtx(t), targets[b.name])
				require.NoError(t, err, "%s opens TCP to %s", a.name, b.name)
				require.Equal(t, b.name, bn.Host)
			}
		}
	})

	t.Run("paths", func(t *testing.T) {
		waitPath(t, bin, ms["ei1"], ms["ei2"], mesh.PathDirect, probeTimeout)
		_, ep := ms["ei1"].pathTo(t, bin, "ei2")
		require.Equal(t, netip.MustParseAddrPort("192.0.2.22:51820"), ep, "ei1 reaches ei2 at its NAT's mapping")
		waitPath(t, bin, ms["sym1"], ms["sym2"], mesh.PathRelay, probeTimeout)
		for _, other := range []string{"ei1", "sym1"} {
			waitPath(t, bin, ms["noudp"], ms[other], mesh.PathRelay, probeTimeout)
		}
		st := ms["sym1"].status(t, bin)
		require.Equal(t, "symmetric", st.nat())
		require.True(t, st.Self.Relay)
		require.Equal(t, "endpoint-independent", ms["ei1"].status(t, bin).nat())
		require.Equal(t, "", ms["noudp"].status(t, bin).nat(), "no STUN answer without UDP")
	})

	t.Run("the relayed member moves to direct when UDP opens", func(t *testing.T) {
		noudp, ei1 := ms["noudp"], ms["ei1"]
		noudp.nat.AllowUDP()
		start := time.Now()
		waitPath(t, bin, noudp, ei1, mesh.PathDirect, 60*time.Second)
		t.Logf("direct %v after the block lifted", time.Since(start).Round(100*time.Millisecond))
		require.NoError(t, noudp.host.Ping(probeCtx(t), ei1.addr))
		require.NoError(t, ei1.host.Ping(probeCtx(t), noudp.addr))
	})

	t.Run("a member whose NAT forgets its mappings recovers", func(t *testing.T) {
		ei1, ei2 := ms["ei1"], ms["ei2"]
		ei1.nat.FlushConntrack()
		start := time.Now()
		require.NoError(t, ei2.host.Ping(probeCtx(t), ei1.addr), "ei2 -> ei1 after ei1's NAT flushed")
		require.NoError(t, ei1.host.Ping(probeCtx(t), ei2.addr), "ei1 -> ei2 after ei1's NAT flushed")
		t.Logf("both directions answer %v after the flush", time.Since(start).Round(100*time.Millisecond))
		waitPath(t, bin, ei1, ei2, mesh.PathDirect, probeTimeout)
		_, err := ei2.host.DialTCPBanner(probeCtx(t), targets["ei1"])
		require.NoError(t, err)
	})

	for _, m := range members {
		require.NoError(t, m.proc.Stop(), fmt.Sprintf("%s:\n%s", m.name, m.proc.Output()))
	}
}
