package main

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseProxies(t *testing.T) {
	got, err := parseProxies([]string{"10.0.0.0/8", "192.0.2.7", "::1", "fd00::/64"})
	require.NoError(t, err)
	require.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fd00::/64"),
	}, got)
	for _, bad := range []string{"10.0.0.1/8", "proxy.example", "fe80::1%eth0", ""} {
		_, err := parseProxies([]string{bad})
		require.Error(t, err, bad)
		require.Contains(t, err.Error(), "--trusted-proxy")
	}
}
