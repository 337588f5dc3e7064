// Package nsbench holds the measurement helpers shared by the data-plane
// benchmarks of package mesh and mesh/internal/netstack: timed TCP streams
// with their CPU cost, the raw loopback and stock wireguard-go baselines
// built by hand, heap measurement and medians. It is imported by tests only.
package nsbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	stocknetstack "golang.zx2c4.com/wireguard/tun/netstack"

	wmdevice "github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
)

// Result is one timed transfer.
type Result struct {
	// MBps is the rate in MB/s (10^6 bytes), from the first write until the
	// receiver has read everything.
	MBps float64
	// CPUPerMiB is the process's CPU time (user+system, all goroutines)
	// per MiB moved, in milliseconds. Unlike the rate it hardly depends on
	// how busy the (shared) machine is.
	CPUPerMiB float64
}

// Stream sends size bytes over a connection from dial to the accepting side
// of ln, 64 KiB per write and per read on both sides, and times it.
func Stream(tb testing.TB, dial func() (net.Conn, error), ln net.Listener, size int) Result {
	tb.Helper()
	got := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer s.Close()
		// 64 KiB reads on every leg (io.Discard's ReadFrom would use 8 KiB).
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, s, make([]byte, 64<<10))
		if err == nil && n != int64(size) {
			err = fmt.Errorf("received %d of %d bytes", n, size)
		}
		got <- err
	}()
	c, err := dial()
	require.NoError(tb, err)
	buf := make([]byte, 64<<10)
	start, startCPU := time.Now(), CPUTime()
	for left := size; left > 0; {
		k := min(left, len(buf))
		_, err := c.Write(buf[:k])
		require.NoError(tb, err)
		left -= k
	}
	require.NoError(tb, c.Close())
	require.NoError(tb, <-got)
	return Result{
		MBps:      float64(size) / time.Since(start).Seconds() / 1e6,
		CPUPerMiB: float64(CPUTime()-startCPU) / float64(time.Millisecond) / (float64(size) / (1 << 20)),
	}
}

// Raw streams size bytes over kernel TCP on 127.0.0.1.
func Raw(tb testing.TB, size int) Result {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	defer ln.Close()
	return Stream(tb, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }, ln, size)
}

// Device is a wireguard-go device listening on a random UDP port with a
// fresh key, configured by hand through UAPI.
type Device struct {
	Dev  WG
	Pub  string // public key, hex
	Port uint16 // UDP listen port
}

// WG is what Device uses of a wireguard-go device: stock wireguard-go's or
// the wiremesh fork's.
type WG interface {
	IpcSet(string) error
	IpcGet() (string, error)
	Up() error
	Close()
}

// NewDevice creates and brings up a device over tdev and bind: the wiremesh
// fork with the message buffers tdev asks for when it says
// (netstack.Net.MessageBufferSize, as in the library), stock wireguard-go
// otherwise (the stock baselines).
func NewDevice(tb testing.TB, tdev tun.Device, bind conn.Bind) *Device {
	tb.Helper()
	var priv [32]byte
	_, err := rand.Read(priv[:])
	require.NoError(tb, err)
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	require.NoError(tb, err)
	var dev WG
	if s, ok := tdev.(interface{ MessageBufferSize() int }); ok {
		dev = wmdevice.NewDeviceSized(tdev, bind, wmdevice.NewLogger(wmdevice.LogLevelSilent, ""), s.MessageBufferSize())
	} else {
		dev = device.NewDevice(tdev, bind, device.NewLogger(device.LogLevelSilent, ""))
	}
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
	return &Device{Dev: dev, Pub: hex.EncodeToString(pub), Port: port}
}

// AddPeer makes other a peer of d, reachable on 127.0.0.1, owning allowed.
func (d *Device) AddPeer(tb testing.TB, other *Device, allowed ...netip.Prefix) {
	tb.Helper()
	var sb strings.Builder
	fmt.Fprintf(&sb, "public_key=%s\nendpoint=127.0.0.1:%d\n", other.Pub, other.Port)
	for _, p := range allowed {
		fmt.Fprintf(&sb, "allowed_ip=%s\n", p)
	}
	require.NoError(tb, d.Dev.IpcSet(sb.String()))
}

// Stock tunnel addresses of the hand-built baseline pair.
var (
	StockAddrA = netip.MustParseAddr("10.79.255.1")
	StockAddrB = netip.MustParseAddr("10.79.255.2")
)

// StockPair is the baseline: two stock wireguard-go tun/netstack devices
// with the standard bind, peered over 127.0.0.1 by hand, as a program using
// wireguard-go directly would set them up.
type StockPair struct {
	A, B   *stocknetstack.Net
	da, db *Device
}

// NewStockPair builds the baseline pair with the given tunnel MTU.
func NewStockPair(tb testing.TB, mtu int) *StockPair {
	tb.Helper()
	ta, na, err := stocknetstack.CreateNetTUN([]netip.Addr{StockAddrA}, nil, mtu)
	require.NoError(tb, err)
	tbd, nb, err := stocknetstack.CreateNetTUN([]netip.Addr{StockAddrB}, nil, mtu)
	require.NoError(tb, err)
	p := &StockPair{A: na, B: nb}
	p.da = NewDevice(tb, ta, conn.NewDefaultBind())
	p.db = NewDevice(tb, tbd, conn.NewDefaultBind())
	p.da.AddPeer(tb, p.db, netip.PrefixFrom(StockAddrB, 32))
	p.db.AddPeer(tb, p.da, netip.PrefixFrom(StockAddrA, 32))
	return p
}

// Close closes both devices (and with them their netstacks).
func (p *StockPair) Close() {
	p.da.Dev.Close()
	p.db.Dev.Close()
}

// Stream streams size bytes from A to B through the tunnel.
func (p *StockPair) Stream(tb testing.TB, size int) Result {
	tb.Helper()
	dst := netip.AddrPortFrom(StockAddrB, 9000)
	ln, err := p.B.ListenTCPAddrPort(dst)
	require.NoError(tb, err)
	defer ln.Close()
	return Stream(tb, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return p.A.DialContextTCPAddrPort(ctx, dst)
	}, ln, size)
}

// Stock builds a stock pair, streams size bytes and closes it.
func Stock(tb testing.TB, size, mtu int) Result {
	tb.Helper()
	p := NewStockPair(tb, mtu)
	defer p.Close()
	return p.Stream(tb, size)
}

// HeapInUse returns runtime.MemStats.HeapInuse after two GCs.
func HeapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// SettledHeap polls HeapInUse until it stops growing (wireguard-go devices
// allocate their buffers in goroutines that start after NewDevice/Up
// return), for at most 5 seconds.
func SettledHeap() uint64 {
	prev := HeapInUse()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		cur := HeapInUse()
		if cur <= prev+prev/200 {
			return max(cur, prev)
		}
		prev = cur
	}
	return prev
}

// Median returns the median of xs (0 for none). xs is not modified.
func Median(xs []float64) float64 { return Quantile(xs, 0.5) }

// Quantile returns the q-quantile (0..1) of xs by the nearest-rank method
// (0 for none). xs is not modified.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1 // ceil(q*n) - 1
	return s[max(0, min(i, len(s)-1))]
}
