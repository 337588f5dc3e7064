package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWriteReleasesBuffer: once Write returns, the stack holds no reference
// to the caller's buffer, on a dialed and an accepted connection, open or
// closed (a closed connection's endpoint lives on in
// TIME_WAIT for a minute). gVisor's TCP endpoint caches the
// io.LimitedReader it reads a write through, and that reader kept the last
// written buffer reachable: 64 KiB per connection for a 64 KiB write.
func TestWriteReleasesBuffer(t *testing.T) {
	p := newPair(t, Config{}, nil)
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	ln, err := p.b.ListenTCPAddrPort(netip.AddrPortFrom(testAddrB, 8081))
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	dialed, err := p.a.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(testAddrB, 8081))
	require.NoError(t, err)
	defer dialed.Close()
	acc, ok := <-accepted
	require.True(t, ok, "accept")
	defer acc.Close()

	for _, tc := range []struct {
		name     string
		from, to net.Conn
		close    bool
	}{
		{"dialed, open", dialed, acc, false},
		{"accepted, open", acc, dialed, false},
		{"dialed, closed", dialed, acc, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			freed := writeTracked(t, tc.from, tc.to, 64<<10)
			if tc.close {
				require.NoError(t, tc.from.(interface{ CloseWrite() error }).CloseWrite())
				_, err := io.Copy(io.Discard, tc.to)
				require.NoError(t, err)
				require.NoError(t, tc.to.Close())
				_, err = io.Copy(io.Discard, tc.from) // EOF: the endpoint is in TIME_WAIT
				require.NoError(t, err)
				require.NoError(t, tc.from.Close())
			}
			requireFreed(t, freed)
		})
	}
}

// writeTracked writes a fresh buffer of size bytes from one end, reads it
// at the other, and returns a channel closed when the buffer is collected.
func writeTracked(t *testing.T, from, to net.Conn, size int) <-chan struct{} {
	t.Helper()
	freed := make(chan struct{})
	buf := make([]byte, size)
	runtime.AddCleanup(&buf[0], func(ch chan struct{}) { close(ch) }, freed)
	_, err := from.Write(buf)
	require.NoError(t, err)
	_, err = io.ReadFull(to, make([]byte, size))
	require.NoError(t, err)
	return freed
}

// requireFreed runs GCs until freed is closed, for up to 5 seconds.
func requireFreed(t *testing.T, freed <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		select {
		case <-freed:
			return
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the written buffer is still reachable 5s after Write returned")
		}
	}
}
