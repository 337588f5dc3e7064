package udpbind

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/conn"
)

// TestWake: Wake makes a blocked first receive function return ErrWoken,
// a Wake before the call makes the next call return it, and the function
// then receives datagrams again (the wake is cleared, not sticky).
func TestWake(t *testing.T) {
	b := New(4)
	fns, port, err := b.Open(0)
	require.NoError(t, err)
	defer b.Close()
	bufs := make([][]byte, 4)
	for i := range bufs {
		bufs[i] = make([]byte, 2000)
	}
	sizes, eps := make([]int, 4), make([]conn.Endpoint, 4)
	recv := func() (int, error) {
		type res struct {
			n   int
			err error
		}
		ch := make(chan res, 1)
		go func() {
			n, err := fns[0](bufs, sizes, eps)
			ch <- res{n, err}
		}()
		select {
		case r := <-ch:
			return r.n, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("receive still blocked")
			return 0, nil
		}
	}

	// Blocked, then woken.
	go func() {
		time.Sleep(50 * time.Millisecond)
		b.Wake()
	}()
	_, err = recv()
	require.ErrorIs(t, err, ErrWoken)

	// Woken before the call: the call returns at once.
	b.Wake()
	_, err = recv()
	require.ErrorIs(t, err, ErrWoken)

	// Cleared: a datagram is received, not another ErrWoken.
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer u.Close()
	_, err = u.WriteToUDP([]byte("hello"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	require.NoError(t, err)
	n, err := recv()
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, "hello", string(bufs[0][:sizes[0]]))

	// Closed: Wake is a no-op, receive reports the close.
	require.NoError(t, b.Close())
	b.Wake()
	_, err = recv()
	require.ErrorIs(t, err, net.ErrClosed)
}
