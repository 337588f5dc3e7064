package mesh

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// TestRepairDrift: what `wg set` changes on a device (peers removed,
// added, allowed IPs, keepalive, preshared key, private key) repairDrift
// puts back, and a device nobody changed is left alone.
func TestRepairDrift(t *testing.T) {
	d := newTestDev(t, 1)
	p2, p3 := newTestDev(t, 2), newTestDev(t, 3)
	want := peersOf(p2.peer(false, true), p3.peer(false, true, netip.MustParsePrefix("10.5.0.0/24")))
	require.NoError(t, d.applyPeers(want))
	fixed, err := d.repairDrift()
	require.NoError(t, err)
	require.False(t, fixed, "nothing changed")

	stranger, err := newPrivateKey()
	require.NoError(t, err)
	otherPriv, err := newPrivateKey()
	require.NoError(t, err)
	hexKey := func(k api.Key) string { return hex.EncodeToString(k[:]) }
	for _, tc := range []struct{ name, set string }{
		{"peer removed", fmt.Sprintf("public_key=%s\nremove=true\n", hexKey(p2.pub))},
		{"stranger added", fmt.Sprintf("public_key=%s\nallowed_ip=10.9.0.0/24\n", hexKey(api.PublicKey(stranger)))},
		{"allowed IPs replaced", fmt.Sprintf("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=10.5.0.0/25\n", hexKey(p3.pub))},
		{"allowed IP added", fmt.Sprintf("public_key=%s\nallowed_ip=192.0.2.0/24\n", hexKey(p2.pub))},
		{"keepalive", fmt.Sprintf("public_key=%s\npersistent_keepalive_interval=99\n", hexKey(p2.pub))},
		{"preshared key", fmt.Sprintf("public_key=%s\npreshared_key=%s\n", hexKey(p3.pub), hexKey(stranger))},
		{"private key", fmt.Sprintf("private_key=%s\n", hexKey(otherPriv))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, d.dev.IpcSet(tc.set))
			fixed, err := d.repairDrift()
			require.NoError(t, err)
			require.True(t, fixed)
			s, err := d.dev.IpcGet()
			require.NoError(t, err)
			have, err := parseConfig(s)
			require.NoError(t, err)
			require.Equal(t, d.priv, have.priv)
			require.Len(t, have.peers, 2)
			for k, w := range want {
				require.Equal(t, w.AllowedIPs, have.peers[k].AllowedIPs)
				require.Equal(t, w.Keepalive, have.peers[k].Keepalive)
				require.False(t, have.psk[k])
			}
			fixed, err = d.repairDrift()
			require.NoError(t, err)
			require.False(t, fixed, "repaired once for all")
		})
	}
	// The device still carries traffic. p2 has no endpoint for d: d
	// initiates (both at once would cross, see holdDelay).
	require.NoError(t, p2.applyPeers(peersOf(d.peer(false, false))))
	roundTrip(t, d, echoTCP(t, p2))

	d.close()
	_, err = d.repairDrift()
	require.Error(t, err)
}

// TestDriftFixIgnoresEndpoints: a roaming peer's endpoint is WireGuard's
// business, not drift.
func TestDriftFixIgnoresEndpoints(t *testing.T) {
	k := api.Key{1}
	applied := map[api.Key]wgPeer{k: {PublicKey: k, Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}, Keepalive: 25}}
	have := deviceConfig{listenPort: 7, peers: map[api.Key]wgPeer{k: {PublicKey: k, Endpoint: netip.MustParseAddrPort("198.51.100.9:4000"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}, Keepalive: 25}}}
	require.Empty(t, driftFix(have, api.Key{}, 7, applied))
	have.fwmark = 5
	require.Equal(t, "fwmark=0\n", driftFix(have, api.Key{}, 7, applied))
}
