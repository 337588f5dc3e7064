package netlab

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// NATTable is the nftables table (family ip) that [Host.Masquerade] and
// [Host.NAT] create.
const NATTable = "netlab_nat"

// NATKind is how a NAT router made by [Host.NAT] maps its inside
// addresses. Every kind filters like common home and cloud NATs: only
// replies to what went out come back in ("port-restricted").
type NATKind int

const (
	// NATEndpointIndependent masquerades and keeps the inside source port
	// when it is free, so one inside socket gets the same public address
	// and port towards every destination: peers can reach it there once
	// it has sent to them (hole punching works).
	NATEndpointIndependent NATKind = iota
	// NATSymmetric picks a random public port for every new destination
	// (nftables "masquerade fully-random"): the address a STUN server
	// sees is of no use to anyone else, so hole punching fails.
	NATSymmetric
	// NATNoUDP is NATEndpointIndependent that forwards no UDP at all,
	// like networks that allow only TCP out. [Host.AllowUDP] lifts the
	// block, [Host.BlockUDP] puts it back.
	NATNoUDP
)

func (k NATKind) String() string {
	switch k {
	case NATEndpointIndependent:
		return "endpoint-independent"
	case NATSymmetric:
		return "symmetric"
	case NATNoUDP:
		return "no-udp"
	}
	return fmt.Sprintf("NATKind(%d)", int(k))
}

// Masquerade makes h an endpoint-independent NAT router towards outDev:
// [Host.NAT] with NATEndpointIndependent.
func (h *Host) Masquerade(outDev string) {
	h.lab.t.Helper()
	h.NAT(outDev, NATEndpointIndependent)
}

// NAT makes h a NAT router of the given kind towards outDev: source NAT
// for everything leaving through outDev, and a forward policy that lets
// established/related traffic back in and drops new connections arriving
// on outDev (no inbound port is open). New connections to h itself on
// outDev are dropped too, as home and cloud routers do: besides closing
// h's own ports, this keeps unsolicited packets (a peer's first hole
// punching attempt) from leaving conntrack entries that would make the
// router pick another public port for the reply flow. Everything lives in
// the table [NATTable]. It enables forwarding too. It skips the test if
// `nft` is missing.
func (h *Host) NAT(outDev string, kind NATKind) {
	h.lab.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		h.lab.t.Skipf("needs nftables: `nft` not found on PATH; skipping end-to-end test %s that needs a NAT router", h.lab.t.Name())
	}
	if outDev == "" || strings.ContainsAny(outDev, "\" \t\n") {
		h.lab.t.Fatalf("netlab: NAT in %s: invalid interface name %q", h.name, outDev)
	}
	masq := "masquerade"
	if kind == NATSymmetric {
		masq = "masquerade fully-random"
	}
	block := ""
	if kind == NATNoUDP {
		block = "meta l4proto udp drop"
	}
	ruleset := fmt.Sprintf(`table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "%[2]s" %[3]s
	}
	chain block {
		type filter hook forward priority filter - 10; policy accept;
		%[4]s
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iifname != "%[2]s" accept
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "%[2]s" ct state new drop
	}
}
`, NATTable, outDev, masq, block)
	h.nft(ruleset)
	h.EnableForwarding()
}

// BlockUDP makes a NAT router made by [Host.NAT] drop all forwarded UDP.
func (h *Host) BlockUDP() {
	h.lab.t.Helper()
	h.nft(fmt.Sprintf("flush chain ip %s block\nadd rule ip %[1]s block meta l4proto udp drop\n", NATTable))
}

// AllowUDP lifts [Host.BlockUDP] (or the block of a NATNoUDP router).
func (h *Host) AllowUDP() {
	h.lab.t.Helper()
	h.nft(fmt.Sprintf("flush chain ip %s block\n", NATTable))
}

// FlushConntrack forgets every connection tracked in h (`conntrack -F`):
// a NAT router then has no mappings, as after a reboot or a timeout, and
// gives the next packet of each flow a new one.
func (h *Host) FlushConntrack() {
	h.lab.t.Helper()
	h.must(h.Do(func() error {
		if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
			return fmt.Errorf("netlab: flush conntrack in %s: %w", h.name, err)
		}
		return nil
	}))
}

// nft loads a script into h's nftables.
func (h *Host) nft(script string) {
	h.lab.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", h.ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		h.lab.t.Fatalf("netlab: nft in %s: %v: %s\n%s", h.name, err, out, script)
	}
}
