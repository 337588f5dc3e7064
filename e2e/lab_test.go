package e2e

import (
	"testing"

	"github.com/wiremesh/wiremesh/internal/netlab"
)

// wanLab is a lab with a WAN switch and the service on it (see
// startService), for tests that need root and a TUN device.
type wanLab struct {
	*netlab.Lab
	bin string // the wiremesh command
	wan *netlab.Switch
	svc *service
}

// newWANLab skips t without root or TUN, builds the wiremesh command and
// starts the service with extra flags (see startService).
func newWANLab(t testing.TB, serviceFlags ...string) *wanLab {
	t.Helper()
	netlab.RequireRoot(t)
	netlab.RequireTUN(t)
	w := &wanLab{bin: netlab.BuildBinary(t, wiremeshPkg), Lab: netlab.New(t)}
	w.wan = w.Switch("wan")
	w.svc = startService(t, w.Lab, w.wan, w.bin, serviceFlags...)
	return w
}

// router makes a host on the WAN at wanAddr with loAddr on its lo: a
// service inside its child prefix.
func (w *wanLab) router(name, wanAddr, loAddr string) *netlab.Host {
	h := w.Host(name)
	w.Connect(h, w.wan, pfx(wanAddr))
	h.AddAddr("lo", pfx(loAddr))
	return h
}

// spokeBehindNAT makes the host "spoke" at 10.99.0.2 behind "nat", which
// masquerades it as 192.0.2.9 on the WAN: nothing on the WAN can open a
// connection to the spoke.
func (w *wanLab) spokeBehindNAT() (spoke, nat *netlab.Host) {
	nat = w.Host("nat")
	w.Connect(nat, w.wan, pfx("192.0.2.9/24"))
	spoke = w.Host("spoke")
	w.Wire(spoke, pfx("10.99.0.2/24"), nat, pfx("10.99.0.1/24"))
	spoke.DefaultRoute(addr("10.99.0.1"))
	nat.Masquerade("wan")
	return spoke, nat
}

// seedLab is the seed scenario's network, no agent running yet: the
// service at 192.0.2.1; node1 at 192.0.2.11 with 172.24.0.10 on its lo and
// a container at 172.24.0.2 behind its bridge br0 (172.24.0.1/24); node2
// at 192.0.2.12 with 172.28.0.10 on its lo; and the spoke behind a NAT
// (spokeBehindNAT).
type seedLab struct {
	*wanLab
	node1, container, node2, nat, spoke *netlab.Host
}

func newSeedLab(t testing.TB) *seedLab {
	t.Helper()
	s := &seedLab{wanLab: newWANLab(t)}
	s.node1 = s.router("node1", "192.0.2.11/24", "172.24.0.10/32")
	s.node1.Bridge("br0", pfx("172.24.0.1/24"))
	s.container = s.Host("container")
	s.AttachToBridge(s.container, s.node1, "br0", pfx("172.24.0.2/24"))
	s.container.DefaultRoute(addr("172.24.0.1"))
	s.node2 = s.router("node2", "192.0.2.12/24", "172.28.0.10/32")
	s.spoke, s.nat = s.spokeBehindNAT()
	return s
}
