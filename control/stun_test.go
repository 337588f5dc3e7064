package control

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
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

// stunMapped asks the STUN responder at srv from conn and returns the
// reflexive address it answers.
func stunMapped(t *testing.T, conn net.PacketConn, srv netip.AddrPort) netip.AddrPort {
	t.Helper()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	_, err := conn.WriteTo(req.Raw, net.UDPAddrFromAddrPort(srv))
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 1500)
	n, _, err := conn.ReadFrom(buf)
	require.NoError(t, err)
	resp := &stun.Message{Raw: buf[:n]}
	require.NoError(t, resp.Decode())
	require.Equal(t, req.TransactionID, resp.TransactionID)
	var xa stun.XORMappedAddress
	require.NoError(t, xa.GetFrom(resp))
	ip, _ := netip.AddrFromSlice(xa.IP)
	return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port))
}

// TestServiceTwoSTUNPorts: the service answers STUN on two ports (the
// second one the next port, or "off") and advertises both.
func TestServiceTwoSTUNPorts(t *testing.T) {
	s := startService(t, Options{DataDir: t.TempDir(), InsecureHTTP: true})
	defer s.Close()
	main, alt := s.STUNAddr(), s.STUNAltAddr()
	require.True(t, alt.IsValid())
	require.NotEqual(t, main.Port(), alt.Port())
	var info api.Info
	code, ae := callURL(t, http.DefaultClient, "GET", s.URL()+"/v1/info", "", nil, &info)
	require.Nil(t, ae)
	require.Equal(t, 200, code)
	require.Equal(t, alt.String(), info.STUNAltAddr)
	require.True(t, info.Relay)

	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer conn.Close()
	self := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	require.Equal(t, self, stunMapped(t, conn, main))
	require.Equal(t, self, stunMapped(t, conn, alt))

	// A fixed port: the second one is the next.
	probe, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()
	s2 := startService(t, Options{DataDir: t.TempDir(), InsecureHTTP: true, STUNListen: fmt.Sprintf("127.0.0.1:%d", port)})
	defer s2.Close()
	require.Equal(t, uint16(port+1), s2.STUNAltAddr().Port())
	s3 := startService(t, Options{DataDir: t.TempDir(), InsecureHTTP: true, STUNAltListen: "off"})
	defer s3.Close()
	require.False(t, s3.STUNAltAddr().IsValid())
}
