package netstack

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/wiremesh/wiremesh/mesh/internal/netstack/nsbench"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// pair is two members A and B, each a Net inside a wireguard-go device.
type pair struct {
	a, b   *Net
	wa, wb *nsbench.Device
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
	p.wa = nsbench.NewDevice(tb, a, a.PaceBind(bind()))
	p.wb = nsbench.NewDevice(tb, b, b.PaceBind(bind()))
	p.wa.AddPeer(tb, p.wb, append([]netip.Prefix{netip.PrefixFrom(testAddrB, 32), netip.PrefixFrom(testAddr6B, 128)}, extraB...)...)
	p.wb.AddPeer(tb, p.wa, netip.PrefixFrom(testAddrA, 32), netip.PrefixFrom(testAddr6A, 128))
	return p
}

func (p *pair) close() {
	p.wa.Dev.Close()
	p.wb.Dev.Close()
	p.a.Close()
	p.b.Close()
}

// memberBind is the conn.Bind a member uses with this package.
func memberBind() conn.Bind { return udpbind.New(DefaultBatchSize) }
