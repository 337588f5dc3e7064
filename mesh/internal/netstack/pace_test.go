package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fakeBind is a conn.Bind whose receive function returns batches of data
// messages on demand and whose Send records nothing.
type fakeBind struct {
	recv chan batch
}

// batch is what the fake receive function returns next: n data messages
// for receiver index idx.
type batch struct {
	n   int
	idx uint32
}

func (b *fakeBind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	return []conn.ReceiveFunc{func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		bt := <-b.recv
		n := min(bt.n, len(bufs))
		for i := range n {
			m := wgMessage(transportType, 100)
			binary.LittleEndian.PutUint32(m[4:8], bt.idx)
			sizes[i] = copy(bufs[i], m)
		}
		return n, nil
	}}, 1, nil
}
func (b *fakeBind) Close() error                                { return nil }
func (b *fakeBind) SetMark(uint32) error                        { return nil }
func (b *fakeBind) Send([][]byte, conn.Endpoint) error          { return nil }
func (b *fakeBind) ParseEndpoint(string) (conn.Endpoint, error) { return nil, nil }
func (b *fakeBind) BatchSize() int                              { return DefaultBatchSize }

// wgMessage is a WireGuard message of type typ and n bytes.
func wgMessage(typ byte, n int) []byte {
	m := make([]byte, n)
	m[0] = typ
	return m
}

func messages(k int, typ byte, n int) [][]byte {
	var ms [][]byte
	for range k {
		ms = append(ms, wgMessage(typ, n))
	}
	return ms
}

// pacedNet is a Net with a paced fakeBind whose waits last wait, and k
// outbound packets queued for tun Read (to an address not its own).
func pacedNet(t *testing.T, wait time.Duration, k int) (*Net, conn.Bind) {
	n, err := New(Config{Addrs: []netip.Addr{testAddrA}})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	b := n.PaceBind(&fakeBind{recv: make(chan batch, 100)})
	n.ep.pace.wait, n.ep.paceRx.wait = wait, wait
	for range k {
		p := make([]byte, header.IPv4MinimumSize+100)
		header.IPv4(p).Encode(&header.IPv4Fields{
			TotalLength: uint16(len(p)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(testAddrA.As4()),
			DstAddr:     tcpip.AddrFrom4([4]byte{10, 77, 0, 2}),
		})
		n.ep.enqueueRaw(p)
	}
	return n, b
}

// readAsync calls n.Read once in a goroutine and returns its packet count.
func readAsync(n *Net) <-chan int {
	got := make(chan int, 1)
	go func() {
		bufs, sizes := make([][]byte, DefaultBatchSize), make([]int, DefaultBatchSize)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		k, _ := n.Read(bufs, sizes, 0)
		got <- k
	}()
	return got
}

func TestPaceOutWaitsForSend(t *testing.T) {
	n, b := pacedNet(t, time.Hour, maxInFlight+2*DefaultBatchSize)
	for read := 0; read < maxInFlight; {
		read += <-readAsync(n)
	}
	got := readAsync(n)
	select {
	case k := <-got:
		t.Fatalf("Read returned %d packets with %d inside wireguard-go", k, maxInFlight)
	case <-time.After(50 * time.Millisecond):
	}
	// Keepalives, handshakes and short messages carry no packet of ours.
	require.NoError(t, b.Send(messages(DefaultBatchSize, transportType, transportKeepaliveLen), nil))
	require.NoError(t, b.Send(messages(DefaultBatchSize, 1, 148), nil))
	select {
	case k := <-got:
		t.Fatalf("Read returned %d packets after sends of no data", k)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, b.Send(messages(1, transportType, 100), nil))
	select {
	case k := <-got:
		require.Equal(t, DefaultBatchSize, k)
	case <-time.After(10 * time.Second):
		t.Fatal("Read still waits after a Send made room")
	}
}

func TestPaceOutForgets(t *testing.T) {
	n, _ := pacedNet(t, 20*time.Millisecond, maxInFlight+2*DefaultBatchSize)
	for read := 0; read < maxInFlight; {
		read += <-readAsync(n)
	}
	start := time.Now()
	select {
	case k := <-readAsync(n): // nothing is ever sent: the count is forgotten
		require.Equal(t, DefaultBatchSize, k)
		require.GreaterOrEqual(t, time.Since(start), 20*time.Millisecond)
	case <-time.After(10 * time.Second):
		t.Fatal("Read waits for good when packets are never sent")
	}
	require.Equal(t, int64(DefaultBatchSize), n.ep.pace.inFlight.Load())
}

func TestPaceOutClose(t *testing.T) {
	n, _ := pacedNet(t, time.Hour, maxInFlight+DefaultBatchSize)
	for read := 0; read < maxInFlight; {
		read += <-readAsync(n)
	}
	got := readAsync(n)
	n.Close()
	select {
	case k := <-got:
		require.Zero(t, k)
	case <-time.After(10 * time.Second):
		t.Fatal("Read waits after Close")
	}
}

func TestPaceIn(t *testing.T) {
	const ours = 0x01020304
	for _, wait := range []time.Duration{time.Hour, 20 * time.Millisecond} {
		n, b := pacedNet(t, wait, 0)
		fns, _, err := b.Open(0)
		require.NoError(t, err)
		fb := b.(*pacedBind).Bind.(*fakeBind)
		// The device announces its index in a handshake response.
		resp := wgMessage(responseType, 92)
		binary.LittleEndian.PutUint32(resp[4:8], ours)
		require.NoError(t, b.Send([][]byte{resp}, nil))
		recv := func() <-chan int {
			got := make(chan int, 1)
			go func() {
				bufs, sizes := make([][]byte, DefaultBatchSize), make([]int, DefaultBatchSize)
				for i := range bufs {
					bufs[i] = make([]byte, 2048)
				}
				k, _ := fns[0](bufs, sizes, make([]conn.Endpoint, DefaultBatchSize))
				got <- k
			}()
			return got
		}
		for range maxInFlight / DefaultBatchSize {
			// Datagrams for other indexes (anyone can send them) do not count.
			fb.recv <- batch{DefaultBatchSize, ours + 1}
			require.Equal(t, DefaultBatchSize, <-recv())
			fb.recv <- batch{DefaultBatchSize, ours}
			require.Equal(t, DefaultBatchSize, <-recv())
		}
		require.Equal(t, int64(maxInFlight), n.ep.paceRx.inFlight.Load())
		fb.recv <- batch{DefaultBatchSize, ours}
		got := recv()
		start := time.Now()
		if wait == time.Hour {
			select {
			case k := <-got:
				t.Fatalf("receive returned %d packets with %d not yet written to tun", k, maxInFlight)
			case <-time.After(50 * time.Millisecond):
			}
			// tun Write of one packet makes room (any bytes do: the count
			// is of what wireguard-go writes, delivered or not).
			_, err := n.Write([][]byte{make([]byte, 40)}, 0)
			require.NoError(t, err)
		}
		select {
		case k := <-got:
			require.Equal(t, DefaultBatchSize, k)
			if wait != time.Hour {
				require.GreaterOrEqual(t, time.Since(start), wait)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("receive still waits (pace wait %v)", wait)
		}
	}
}
