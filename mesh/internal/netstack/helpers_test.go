package netstack

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// wgDev is a wireguard-go device on 127.0.0.1 with a fresh key.
type wgDev struct {
	dev  *device.Device
	pub  string // hex
	port uint16
}

func newWGDev(tb testing.TB, tdev tun.Device, bind conn.Bind) *wgDev {
	tb.Helper()
	var priv [32]byte
	_, err := rand.Read(priv[:])
	require.NoError(tb, err)
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	require.NoError(tb, err)
	dev := device.NewDevice(tdev, bind, device.NewLogger(device.LogLevelSilent, ""))
	require.NoError(tb, dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\n", hex.EncodeToString(priv[:]))))
	require.NoError(tb, dev.Up())
	conf, err := dev.IpcGet()
	require.NoError(tb, err)
	var port uint16
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			require.NoError(tb, err)
			port = uint16(p)
		}
	}
	require.NotZero(tb, port)
	return &wgDev{dev: dev, pub: hex.EncodeToString(pub), port: port}
}

// peer makes b a peer of a, reachable on 127.0.0.1, owning allowed.
func (a *wgDev) peer(tb testing.TB, b *wgDev, allowed ...netip.Prefix) {
	tb.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "public_key=%s\nendpoint=127.0.0.1:%d\n", b.pub, b.port)
	for _, p := range allowed {
		fmt.Fprintf(&sb, "allowed_ip=%s\n", p)
	}
	require.NoError(tb, a.dev.IpcSet(sb.String()))
}

// pair is two members A and B, each a Net inside a wireguard-go device.
type pair struct {
	a, b   *Net
	wa, wb *wgDev
	addrA  netip.Addr
	addrB  netip.Addr
}

var (
	testAddrA  = netip.MustParseAddr("10.77.0.1")
	testAddrB  = netip.MustParseAddr("10.77.0.2")
	testAddr6A = netip.MustParseAddr("fd77::1")
	testAddr6B = netip.MustParseAddr("fd77::2")
)

// newPair builds A and B; extraB are further prefixes A routes to B.
func newPair(tb testing.TB, cfg Config, bind func() conn.Bind, extraB ...netip.Prefix) *pair {
	tb.Helper()
	if bind == nil {
		bind = memberBind
	}
	ca, cb := cfg, cfg
	ca.Addrs = []netip.Addr{testAddrA, testAddr6A}
	cb.Addrs = []netip.Addr{testAddrB, testAddr6B}
	a, err := New(ca)
	require.NoError(tb, err)
	b, err := New(cb)
	require.NoError(tb, err)
	p := &pair{a: a, b: b, addrA: testAddrA, addrB: testAddrB}
	p.wa = newWGDev(tb, a, bind())
	p.wb = newWGDev(tb, b, bind())
	p.wa.peer(tb, p.wb, append([]netip.Prefix{netip.PrefixFrom(testAddrB, 32), netip.PrefixFrom(testAddr6B, 128)}, extraB...)...)
	p.wb.peer(tb, p.wa, netip.PrefixFrom(testAddrA, 32), netip.PrefixFrom(testAddr6A, 128))
	return p
}

func (p *pair) close() {
	p.wa.dev.Close()
	p.wb.dev.Close()
	p.a.Close()
	p.b.Close()
}

// memberBind is the conn.Bind a member uses with this package.
func memberBind() conn.Bind { return udpbind.New(DefaultBatchSize) }
