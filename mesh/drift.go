package mesh

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// The WireGuard device of a kernel-mode node answers the standard UAPI
// socket (uapi_linux.go), so `wg show` works, and so does `wg set`: the
// tools cannot be told that the device is read-only. repairDrift puts
// back what the mesh configured (the private key, the listen port, no
// fwmark, the peers with their allowed IPs and keepalive, no preshared
// keys) and removes peers the mesh does not know. Endpoints are left
// alone: WireGuard changes them itself when a peer roams, and a peer's
// next packet from its real address sets it again.

// deviceConfig is the configuration the device reports (UAPI "get"), as
// far as repairDrift compares it.
type deviceConfig struct {
	priv       api.Key
	listenPort uint16
	fwmark     uint32
	peers      map[api.Key]wgPeer // PublicKey, AllowedIPs (sorted), Keepalive
	psk        map[api.Key]bool   // peers with a preshared key
}

// parseConfig parses the UAPI "get" output.
func parseConfig(s string) (deviceConfig, error) {
	c := deviceConfig{peers: map[api.Key]wgPeer{}, psk: map[api.Key]bool{}}
	var cur *wgPeer
	flush := func() {
		if cur != nil {
			slices.SortFunc(cur.AllowedIPs, comparePrefix)
			c.peers[cur.PublicKey] = *cur
		}
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch {
		case k == "private_key" && cur == nil:
			c.priv, err = hexKey(v)
		case k == "listen_port" && cur == nil:
			var p uint64
			p, err = strconv.ParseUint(v, 10, 16)
			c.listenPort = uint16(p)
		case k == "fwmark" && cur == nil:
			var m uint64
			m, err = strconv.ParseUint(v, 10, 32)
			c.fwmark = uint32(m)
		case k == "public_key":
			flush()
			cur = &wgPeer{}
			cur.PublicKey, err = hexKey(v)
		case cur == nil:
		case k == "preshared_key":
			var psk api.Key
			psk, err = hexKey(v)
			c.psk[cur.PublicKey] = !psk.IsZero()
		case k == "allowed_ip":
			var p netip.Prefix
			p, err = netip.ParsePrefix(v)
			cur.AllowedIPs = append(cur.AllowedIPs, p.Masked())
		case k == "persistent_keepalive_interval":
			var ka uint64
			ka, err = strconv.ParseUint(v, 10, 16)
			cur.Keepalive = uint16(ka)
		}
		if err != nil {
			return deviceConfig{}, fmt.Errorf("device state: line %q: %w", sc.Text(), err)
		}
	}
	flush()
	return c, nil
}

func hexKey(s string) (api.Key, error) {
	var k api.Key
	b, err := hex.DecodeString(s)
	if err == nil && len(b) != len(k) {
		err = fmt.Errorf("%d bytes, want %d", len(b), len(k))
	}
	copy(k[:], b)
	return k, err
}

// driftFix returns the UAPI "set" text that turns the device from have
// back into the configuration the mesh wrote (priv, port and applied), or
// "" when nothing drifted. Endpoints are not compared (see above).
func driftFix(have deviceConfig, priv api.Key, port uint16, applied map[api.Key]wgPeer) string {
	var b strings.Builder
	if have.priv != priv {
		b.WriteString("private_key=" + hex.EncodeToString(priv[:]) + "\n")
	}
	if port != 0 && have.listenPort != port {
		fmt.Fprintf(&b, "listen_port=%d\n", port)
	}
	if have.fwmark != 0 {
		b.WriteString("fwmark=0\n")
	}
	cur := make(map[api.Key]wgPeer, len(have.peers))
	for k, p := range have.peers {
		if a, ok := applied[k]; ok {
			p.Endpoint = a.Endpoint
		}
		cur[k] = p
	}
	b.WriteString(diffPeers(cur, applied))
	for _, k := range sortedKeys(applied) {
		if have.psk[k] {
			b.WriteString("public_key=" + hex.EncodeToString(k[:]) + "\nupdate_only=true\npreshared_key=" + strings.Repeat("0", 64) + "\n")
		}
	}
	return b.String()
}

// repairDrift restores what the mesh configured on the device if it was
// changed from outside (see above), and reports whether it did.
func (d *wgDevice) repairDrift() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false, net.ErrClosed
	}
	s, err := d.dev.IpcGet()
	if err != nil {
		return false, fmt.Errorf("read device state: %w", err)
	}
	have, err := parseConfig(s)
	if err != nil {
		return false, err
	}
	fix := driftFix(have, d.priv, d.port, d.applied)
	if fix == "" {
		return false, nil
	}
	if err := d.dev.IpcSet(fix); err != nil {
		d.applied = map[api.Key]wgPeer{} // the next applyPeers rewrites every peer
		return true, fmt.Errorf("restore the device's configuration: %w", err)
	}
	return true, nil
}
