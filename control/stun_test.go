package control

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"
)

func TestSTUNBinding(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewSTUNServer(pc, nil)
	defer srv.Close()

	conn, err := net.Dial("udp", srv.Addr().String())
	require.NoError(t, err)
	c, err := stun.NewClient(conn)
	require.NoError(t, err)
	defer c.Close()

	got := make(chan netip.AddrPort, 1)
	errs := make(chan error, 1)
	err = c.Do(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint), func(ev stun.Event) {
		if ev.Error != nil {
			errs <- ev.Error
			return
		}
		if err := stun.Fingerprint.Check(ev.Message); err != nil {
			errs <- err
			return
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(ev.Message); err != nil {
			errs <- err
			return
		}
		ip, _ := netip.AddrFromSlice(xa.IP)
		got <- netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port))
	})
	require.NoError(t, err)
	select {
	case ap := <-got:
		require.Equal(t, conn.LocalAddr().(*net.UDPAddr).AddrPort(), ap)
	case err := <-errs:
		t.Fatal(err)
	}
}

func TestSTUNIgnoresOthers(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := NewSTUNServer(pc, nil)
	conn, err := net.Dial("udp", srv.Addr().String())
	require.NoError(t, err)
	defer conn.Close()

	// Garbage, a binding indication and a success response get no answer;
	// a binding request sent after them does.
	ind := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodBinding, stun.ClassIndication))
	succ := stun.MustBuild(stun.TransactionID, stun.BindingSuccess)
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	for _, b := range [][]byte{[]byte("hello"), make([]byte, 20), ind.Raw, succ.Raw, req.Raw} {
		_, err := conn.Write(b)
		require.NoError(t, err)
	}
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	require.NoError(t, err)
	var m stun.Message
	m.Raw = buf[:n]
	require.NoError(t, m.Decode())
	require.Equal(t, stun.BindingSuccess, m.Type)
	require.Equal(t, req.TransactionID, m.TransactionID)
	// Nothing else arrives.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
	_, err = conn.Read(buf)
	require.Error(t, err)

	require.NoError(t, srv.Close())
	require.ErrorIs(t, srv.Close(), net.ErrClosed)
}
