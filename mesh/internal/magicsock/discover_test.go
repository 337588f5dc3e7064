package magicsock

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// fakeSTUN answers binding requests with answer(source); when replyFrom is
// set the answer leaves from that other socket (a spoofer that learned the
// transaction id).
type fakeSTUN struct {
	pc        net.PacketConn
	answer    func(netip.AddrPort) netip.AddrPort
	replyFrom net.PacketConn
}

func startFakeSTUN(t *testing.T, answer func(netip.AddrPort) netip.AddrPort, replyFrom ...net.PacketConn) *fakeSTUN {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	f := &fakeSTUN{pc: pc, answer: answer}
	if len(replyFrom) > 0 {
		f.replyFrom = replyFrom[0]
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if req.Decode() != nil {
				continue
			}
			src := from.(*net.UDPAddr).AddrPort()
			m := f.answer(src)
			resp := stun.MustBuild(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
				&stun.XORMappedAddress{IP: m.Addr().AsSlice(), Port: int(m.Port())}, stun.Fingerprint)
			out := f.pc
			if f.replyFrom != nil {
				out = f.replyFrom
			}
			out.WriteTo(resp.Raw, from)
		}
	}()
	return f
}

func (f *fakeSTUN) addr() netip.AddrPort { return f.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

type published struct {
	cands []api.Candidate
	nat   api.NATType
}

func publisher() (func(context.Context, []api.Candidate, api.NATType) error, chan published) {
	ch := make(chan published, 16)
	return func(_ context.Context, cs []api.Candidate, nat api.NATType) error {
		ch <- published{cs, nat}
		return nil
	}, ch
}

func waitPublished(t *testing.T, ch chan published, want func(published) bool) published {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case p := <-ch:
			if want(p) {
				return p
			}
		case <-deadline:
			t.Fatal("the expected candidates were never published")
		}
	}
}

func TestNATDetection(t *testing.T) {
	public := netip.MustParseAddr("198.51.100.1")
	tests := []struct {
		name      string
		a1, a2    func(netip.AddrPort) netip.AddrPort
		wantNAT   api.NATType
		reflexive netip.AddrPort
	}{
		{"no NAT", sameAddr, sameAddr, api.NATNone, netip.AddrPort{}},
		{"endpoint-independent", fixed(public, 4000), fixed(public, 4000), api.NATEndpointIndependent, netip.AddrPortFrom(public, 4000)},
		{"symmetric", fixed(public, 4000), fixed(public, 4001), api.NATSymmetric, netip.AddrPort{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s1, s2 := startFakeSTUN(t, tt.a1), startFakeSTUN(t, tt.a2)
			pub, ch := publisher()
			manual := netip.MustParseAddrPort("192.0.2.7:51820")
			n := newNode(t, 1, Config{STUN: []netip.AddrPort{s1.addr(), s2.addr()}, Publish: pub, Manual: []netip.AddrPort{manual}})
			want := []api.Candidate{
				{Addr: manual, Type: api.CandidateManual},
				{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port), Type: api.CandidateLocal},
			}
			if tt.reflexive.IsValid() {
				want = append(want, api.Candidate{Addr: tt.reflexive, Type: api.CandidateReflexive})
			}
			// wireguard-go may open the bind twice while coming up (a new
			// port each time): wait for what the last one publishes.
			waitPublished(t, ch, func(p published) bool { return p.nat == tt.wantNAT && reflect.DeepEqual(p.cands, want) })
			require.Equal(t, want, n.conn.Self().Candidates)
			require.Equal(t, tt.wantNAT, n.conn.Self().NAT)
		})
	}
}

// TestSTUNSpoofIgnored: an answer that does not come from the server asked
// is not trusted, even with the right transaction id.
func TestSTUNSpoofIgnored(t *testing.T) {
	evil := netip.MustParseAddrPort("203.0.113.66:6666")
	spoofer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer spoofer.Close()
	s1 := startFakeSTUN(t, fixed(evil.Addr(), evil.Port()), spoofer)
	pub, ch := publisher()
	n := newNode(t, 1, Config{STUN: []netip.AddrPort{s1.addr()}, Publish: pub})
	want := []api.Candidate{{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.port), Type: api.CandidateLocal}}
	waitPublished(t, ch, func(p published) bool { return p.nat == api.NATUnknown && reflect.DeepEqual(p.cands, want) })
	time.Sleep(2 * stunRoundTimeout) // another round, still nothing trusted
	for _, c := range n.conn.Self().Candidates {
		require.NotEqual(t, evil, c.Addr)
	}
}

func sameAddr(a netip.AddrPort) netip.AddrPort { return a }

func fixed(a netip.Addr, port uint16) func(netip.AddrPort) netip.AddrPort {
	return func(netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a, port) }
}
