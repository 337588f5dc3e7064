package mesh

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHostPing(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		name       string
		local, dst netip.Addr
	}{
		{"IPv4", netip.Addr{}, a("127.0.0.1")},
		{"IPv4 from a local address", a("127.0.0.1"), a("127.0.0.1")},
		{"IPv6", netip.Addr{}, a("::1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.dst.Is6() {
				l, err := net.ListenPacket("udp6", "[::1]:0")
				if err != nil {
					t.Skipf("no IPv6 loopback: %v", err)
				}
				l.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			rtt, err := hostPing(ctx, tt.local, tt.dst)
			if err != nil {
				require.ErrorIs(t, err, errNoICMP)
				t.Skipf("no ICMP socket allowed here: %v", err)
			}
			require.Positive(t, rtt)
		})
	}
}

func TestHostPingEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := hostPing(ctx, netip.Addr{}, netip.MustParseAddr("127.0.0.1"))
	require.Error(t, err)
	if !errors.Is(err, errNoICMP) {
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorContains(t, err, "no reply")
	}
}
