package pfilter

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/wiremesh/wiremesh/control/api"
)

// pkt builds a minimal IPv4 or IPv6 packet of proto from src to dst with
// ports (tcp, udp) or the ICMP type in sport; flags are TCP flags.
func pkt(proto uint8, src, dst string, sport, dport uint16, flags uint8) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	l4 := make([]byte, 20)
	switch proto {
	case protoTCP:
		binary.BigEndian.PutUint16(l4, sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		l4[13] = flags
	case protoUDP:
		binary.BigEndian.PutUint16(l4, sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		l4 = l4[:8]
	default:
		l4[0] = uint8(sport)
		l4 = l4[:8]
	}
	if s.Is4() {
		p := make([]byte, 20, 20+len(l4))
		p[0], p[9] = 0x45, proto
		binary.BigEndian.PutUint16(p[2:], uint16(20+len(l4)))
		copy(p[12:], s.AsSlice())
		copy(p[16:], d.AsSlice())
		return append(p, l4...)
	}
	p := make([]byte, 40, 40+len(l4))
	p[0], p[6] = 0x60, proto
	binary.BigEndian.PutUint16(p[4:], uint16(len(l4)))
	copy(p[8:], s.AsSlice())
	copy(p[24:], d.AsSlice())
	return append(p, l4...)
}

func testFilter() *api.Filter {
	pf := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	return &api.Filter{Rules: []api.FilterRule{
		{Rule: 1, Src: pf("100.64.0.3/32", "fd00::3/128"), Dst: pf("172.24.0.0/24", "fd24::/64"), Proto: api.ProtoTCP, Ports: []api.PortRange{{First: 80, Last: 80}}},
		{Rule: 2, Src: pf("100.64.0.0/10"), Dst: pf("100.64.0.1/32"), Proto: api.ProtoUDP, Ports: []api.PortRange{{First: 53, Last: 53}}},
		{Rule: 3, Src: pf("100.64.0.9/32"), Dst: pf("100.64.0.1/32"), Proto: api.ProtoICMP},
		{Rule: 4, Src: pf("100.64.0.8/32"), Dst: pf("100.64.0.1/32"), Proto: api.ProtoAny},
	}}
}

func TestInboundNewFlows(t *testing.T) {
	const syn, synack, ack = tcpSYN, tcpSYN | tcpACK, tcpACK
	tests := []struct {
		name string
		p    []byte
		want bool
	}{
		{"tcp syn to port 80", pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 80, syn), true},
		{"tcp syn to port 80 v6", pkt(protoTCP, "fd00::3", "fd24::5", 40000, 80, syn), true},
		{"tcp syn to port 81", pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 81, syn), false},
		{"tcp syn other prefix", pkt(protoTCP, "100.64.0.3", "172.28.0.5", 40000, 80, syn), false},
		{"tcp syn other source", pkt(protoTCP, "100.64.0.4", "172.24.0.5", 40000, 80, syn), false},
		{"tcp syn to the router itself", pkt(protoTCP, "100.64.0.3", "100.64.0.1", 40000, 80, syn), false},
		{"tcp syn-ack (reply)", pkt(protoTCP, "100.64.0.4", "100.64.0.1", 80, 40000, synack), true},
		{"tcp ack (established)", pkt(protoTCP, "100.64.0.4", "100.64.0.1", 80, 40000, ack), true},
		{"udp 53", pkt(protoUDP, "100.64.0.4", "100.64.0.1", 5000, 53, 0), true},
		{"udp 54", pkt(protoUDP, "100.64.0.4", "100.64.0.1", 5000, 54, 0), false},
		{"echo request allowed", pkt(protoICMP, "100.64.0.9", "100.64.0.1", 8, 0, 0), true},
		{"echo request denied", pkt(protoICMP, "100.64.0.3", "100.64.0.1", 8, 0, 0), false},
		{"echo reply", pkt(protoICMP, "100.64.0.3", "100.64.0.1", 0, 0, 0), true},
		{"unreachable", pkt(protoICMP, "100.64.0.3", "100.64.0.1", 3, 0, 0), true},
		{"echo request v6 denied", pkt(protoICMPv6, "fd00::3", "fd24::5", 128, 0, 0), false},
		{"echo reply v6", pkt(protoICMPv6, "fd00::3", "fd24::5", 129, 0, 0), true},
		{"gre from any-rule source", pkt(47, "100.64.0.8", "100.64.0.1", 0, 0, 0), true},
		{"gre from elsewhere", pkt(47, "100.64.0.3", "100.64.0.1", 0, 0, 0), false},
		{"garbage", []byte{0x45, 1, 2}, false},
	}
	af := testFilter()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			f.Set(af)
			if got := f.Inbound(tt.p); got != tt.want {
				t.Fatalf("Inbound = %v, want %v", got, tt.want)
			}
			g := New() // no filter: everything passes (the stack drops malformed packets)
			if got := g.Inbound(tt.p); !got {
				t.Fatalf("Inbound without filter = %v", got)
			}
		})
	}
}

func TestUDPReplies(t *testing.T) {
	f := New()
	f.Set(&api.Filter{}) // deny every new flow
	out := pkt(protoUDP, "100.64.0.1", "100.64.0.4", 5000, 53, 0)
	reply := pkt(protoUDP, "100.64.0.4", "100.64.0.1", 53, 5000, 0)
	other := pkt(protoUDP, "100.64.0.4", "100.64.0.1", 53, 5001, 0)
	if f.Inbound(reply) {
		t.Fatal("reply before any outbound packet passed")
	}
	f.Outbound(out)
	if !f.Inbound(reply) {
		t.Fatal("reply to an outbound flow dropped")
	}
	if f.Inbound(other) {
		t.Fatal("datagram of another flow passed")
	}
	c := f.Counters()
	if !c.Active || c.Dropped != 2 {
		t.Fatalf("counters %+v, want 2 dropped", c)
	}
}

func TestAcceptedFlowSurvivesChange(t *testing.T) {
	f := New()
	f.Set(testFilter())
	first := pkt(protoUDP, "100.64.0.4", "100.64.0.1", 5000, 53, 0)
	if !f.Inbound(first) {
		t.Fatal("allowed datagram dropped")
	}
	f.Set(&api.Filter{})
	if !f.Inbound(first) {
		t.Fatal("datagram of an accepted flow dropped after the filter changed")
	}
	if f.Inbound(pkt(protoUDP, "100.64.0.4", "100.64.0.1", 5001, 53, 0)) {
		t.Fatal("new flow passed the deny-all filter")
	}
	if f.Inbound(pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 80, tcpSYN)) {
		t.Fatal("new tcp flow passed the deny-all filter")
	}
}

func TestCounters(t *testing.T) {
	f := New()
	if c := f.Counters(); c.Active {
		t.Fatalf("counters without a filter: %+v", c)
	}
	f.Set(testFilter())
	syn := pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 80, tcpSYN)
	f.Inbound(syn)
	f.Inbound(syn)
	f.Inbound(pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 81, tcpSYN))
	c := f.Counters()
	if c.Rules[0] != (RuleCounter{Rule: 1, Accepted: 2}) || c.Dropped != 1 || len(c.Rules) != 4 {
		t.Fatalf("counters %+v", c)
	}
}

func TestHotPathAllocations(t *testing.T) {
	f := New()
	f.Set(testFilter())
	syn := pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 80, tcpSYN)
	data := pkt(protoTCP, "100.64.0.4", "100.64.0.1", 80, 40000, tcpACK)
	udpIn := pkt(protoUDP, "100.64.0.4", "100.64.0.1", 5000, 53, 0)
	udpOut := pkt(protoUDP, "100.64.0.1", "100.64.0.4", 53, 5000, 0)
	f.Inbound(udpIn)
	n := testing.AllocsPerRun(1000, func() {
		f.Inbound(syn)
		f.Inbound(data)
		f.Inbound(udpIn)
		f.Outbound(udpOut)
		f.Outbound(data)
	})
	if n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

func TestFlowTableBounded(t *testing.T) {
	f := New()
	for i := 0; i < maxFlows+100; i++ {
		f.Outbound(pkt(protoUDP, "100.64.0.1", netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String(), uint16(i), 53, 0))
	}
	if n := f.flowCount(); n > maxFlows {
		t.Fatalf("%d flows, limit %d", n, maxFlows)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(pkt(protoTCP, "100.64.0.3", "172.24.0.5", 40000, 80, tcpSYN))
	f.Add(pkt(protoUDP, "fd00::3", "fd24::5", 1, 2, 0))
	f.Fuzz(func(t *testing.T, p []byte) {
		g := New()
		g.Set(testFilter())
		g.Inbound(p)
		g.Outbound(p)
	})
}

func BenchmarkInboundEstablishedTCP(b *testing.B) {
	f := New()
	f.Set(testFilter())
	p := pkt(protoTCP, "100.64.0.4", "100.64.0.1", 80, 40000, tcpACK)
	for b.Loop() {
		f.Inbound(p)
	}
}
