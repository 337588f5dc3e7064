package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// parseChild parses s and applies the form and width rules, as a control
// service does with the text of a request.
func parseChild(s string, pol Policy) (netip.Prefix, error) {
	p, err := ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if err := ValidateChildPrefix(p, pol); err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

func TestParsePrefix(t *testing.T) {
	exit := Policy{AllowDefaultRoute: true}
	wide := Policy{MinBits4: 8}
	tests := []struct {
		name    string
		in      string
		pol     Policy
		want    string // canonical form when accepted
		wantErr string // substring of the error when rejected
	}{
		// Accepted.
		{name: "docker net", in: "172.24.0.0/24", want: "172.24.0.0/24"},
		{name: "ten slash eight in a wide zone", in: "10.0.0.0/8", pol: wide, want: "10.0.0.0/8"},
		{name: "private /12", in: "172.16.0.0/12", want: "172.16.0.0/12"},
		{name: "v6 /32", in: "2001:db8::/32", want: "2001:db8::/32"},
		{name: "half /24", in: "192.168.1.128/25", want: "192.168.1.128/25"},
		{name: "ula /64", in: "fd00:1::/64", want: "fd00:1::/64"},
		{name: "doc /32", in: "2001:db8::/32", want: "2001:db8::/32"},
		{name: "host route", in: "10.9.9.9/32", want: "10.9.9.9/32"},
		{name: "v6 host route", in: "2001:db8::1/128", want: "2001:db8::1/128"},
		{name: "upper-case hex", in: "FD00:1::/64", want: "fd00:1::/64"},
		{name: "v6 leading zero groups", in: "fd00:0001::/64", want: "fd00:1::/64"},
		{name: "cgnat /10 in a wide zone", in: "100.64.0.0/10", pol: wide, want: "100.64.0.0/10"},
		{name: "default v4 with exit nodes", in: "0.0.0.0/0", pol: exit, want: "0.0.0.0/0"},
		{name: "default v6 with exit nodes", in: "::/0", pol: exit, want: "::/0"},
		{name: "just below 224/4", in: "223.255.255.0/24", want: "223.255.255.0/24"},
		{name: "just above loopback", in: "128.0.0.0/8", pol: wide, want: "128.0.0.0/8"},

		// Syntax.
		{name: "empty", in: "", wantErr: `invalid prefix "": empty`},
		{name: "garbage", in: "garbage", wantErr: `unexpected character 'g'`},
		{name: "leading space", in: " 10.0.0.0/8", wantErr: "contains whitespace"},
		{name: "trailing newline", in: "10.0.0.0/8\n", wantErr: "contains whitespace"},
		{name: "inner space", in: "10.0.0.0/ 8", wantErr: "contains whitespace"},
		{name: "unicode space", in: "10.0.0.0/8\u00a0", wantErr: "contains whitespace"},
		{name: "zone", in: "fe80::%eth0/64", wantErr: "IPv6 zone not allowed"},
		{name: "length leading zero", in: "10.0.0.0/024", wantErr: `prefix length "024" has a leading zero`},
		{name: "length zero padded", in: "10.0.0.0/00", wantErr: "leading zero"},
		{name: "octet leading zero", in: "10.0.0.010/32", wantErr: "leading zero"},
		{name: "missing length", in: "10.0.0.0", wantErr: "missing prefix length"},
		{name: "empty length", in: "10.0.0.0/", wantErr: "missing prefix length after '/'"},
		{name: "v4 length too long", in: "10.0.0.0/33", wantErr: "prefix length /33 out of range for IPv4 (0-32)"},
		{name: "v6 length too long", in: "fd00::/129", wantErr: "out of range for IPv6 (0-128)"},
		{name: "huge length", in: "10.0.0.0/99999999999999999999", wantErr: "out of range"},
		{name: "negative length", in: "10.0.0.0/-8", wantErr: "unexpected character '-'"},
		{name: "plus length", in: "10.0.0.0/+8", wantErr: "unexpected character '+'"},
		{name: "hex length", in: "10.0.0.0/1a", wantErr: "not a decimal number"},
		{name: "two slashes", in: "10.0.0.0/8/8", wantErr: "more than one '/'"},
		{name: "octet too big", in: "10.0.0.256/32", wantErr: "bad address"},
		{name: "missing address", in: "/8", wantErr: "bad address"},
		{name: "three octets", in: "10.0.0/24", wantErr: "bad address"},
		{name: "too long", in: "1111111111111111111111111111111111111111111111111111111111111111111/8", wantErr: "too long"},

		// Meaning.
		{name: "host bits", in: "10.1.2.3/16", wantErr: `invalid prefix "10.1.2.3/16": host bits set (did you mean 10.1.0.0/16?)`},
		{name: "v6 host bits", in: "fd00::1/64", wantErr: "did you mean fd00::/64?"},
		{name: "v4-mapped", in: "::ffff:10.0.0.0/104", wantErr: "IPv4-mapped IPv6 (::ffff:0:0/96); write the IPv4 prefix 10.0.0.0/8 instead"},
		{name: "v4-mapped space", in: "::ffff:0.0.0.0/96", wantErr: "IPv4-mapped"},
		{name: "default v4", in: "0.0.0.0/0", wantErr: "default route not allowed"},
		{name: "default v6", in: "::/0", wantErr: "default route not allowed"},
		{name: "loopback", in: "127.0.0.0/8", wantErr: "inside loopback (127.0.0.0/8)"},
		{name: "loopback host", in: "127.0.0.1/32", wantErr: "loopback"},
		{name: "link-local", in: "169.254.0.0/16", wantErr: "link-local (169.254.0.0/16)"},
		{name: "multicast", in: "224.0.0.0/4", wantErr: "multicast (224.0.0.0/4)"},
		{name: "multicast inside", in: "239.1.0.0/16", wantErr: "multicast"},
		{name: "v6 link-local", in: "fe80::/64", wantErr: "link-local (fe80::/10)"},
		{name: "v6 multicast", in: "ff02::/16", wantErr: "multicast (ff00::/8)"},
		{name: "this network", in: "0.0.0.0/8", wantErr: `inside "this network" (0.0.0.0/8)`},
		{name: "unspecified v4", in: "0.0.0.0/32", wantErr: "unspecified address (0.0.0.0/32)"},
		{name: "unspecified v6", in: "::/128", wantErr: "unspecified address (::/128)"},
		{name: "v6 loopback", in: "::1/128", wantErr: "loopback (::1/128)"},
		{name: "broadcast", in: "255.255.255.255/32", wantErr: "broadcast address"},
		{name: "class e", in: "240.0.0.0/4", wantErr: "reserved (240.0.0.0/4)"},
		{name: "contains this network", in: "0.0.0.0/1", wantErr: `overlaps "this network" (0.0.0.0/8)`},
		{name: "contains this network with exit nodes", in: "0.0.0.0/1", pol: exit, wantErr: "overlaps"},
		{name: "contains multicast", in: "192.0.0.0/2", wantErr: "overlaps multicast (224.0.0.0/4)"},
		{name: "contains link-local", in: "169.0.0.0/8", wantErr: "overlaps link-local"},
		{name: "contains v6 loopback", in: "::/64", wantErr: "overlaps the unspecified address (::/128)"},
		{name: "contains v6 multicast", in: "8000::/1", wantErr: "overlaps link-local (fe80::/10)"},

		// Width (issue 12: near-default routes without exit rights).
		{name: "v4 /8", in: "1.0.0.0/8", wantErr: "/8 is wider than the zone allows (the shortest IPv4 prefix is /12)"},
		{name: "v4 /5", in: "8.0.0.0/5", wantErr: "wider than the zone allows"},
		{name: "v4 /3", in: "128.0.0.0/3", wantErr: "wider than the zone allows"},
		{name: "v4 /3 with exit nodes", in: "128.0.0.0/3", pol: exit, wantErr: "wider than the zone allows"},
		{name: "v4 /11", in: "172.0.0.0/11", wantErr: "wider than the zone allows"},
		{name: "v6 /3", in: "2000::/3", wantErr: "/3 is wider than the zone allows (the shortest IPv6 prefix is /32)"},
		{name: "v6 /31", in: "2001:db8::/31", wantErr: "wider"},
		{name: "v4 /9 below a /10 zone limit", in: "10.0.0.0/9", pol: Policy{MinBits4: 10}, wantErr: "wider than the zone allows (the shortest IPv4 prefix is /10)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseChild(tt.in, tt.pol)
			if tt.wantErr != "" {
				require.Error(t, err)
				require.ErrorIs(t, err, ErrInvalidPrefix)
				require.Contains(t, err.Error(), tt.wantErr)
				require.Equal(t, strings.Contains(tt.wantErr, "wider"), errors.Is(err, ErrPrefixTooWide))
				var pe *PrefixError
				require.True(t, errors.As(err, &pe))
				require.Equal(t, tt.in, pe.Input)
				require.False(t, p.IsValid())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, p.String())
			require.NoError(t, ValidateChildPrefix(p, tt.pol))
		})
	}
}

func TestValidateChildPrefix(t *testing.T) {
	tests := []struct {
		name    string
		in      netip.Prefix
		pol     Policy
		wantErr string
	}{
		{name: "zero", in: netip.Prefix{}, wantErr: `invalid prefix "": not a valid prefix`},
		{name: "host bits", in: netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 16), wantErr: "did you mean 10.1.0.0/16?"},
		{name: "mapped", in: netip.MustParsePrefix("::ffff:10.0.0.0/104"), wantErr: "IPv4-mapped"},
		{name: "default v6 strict", in: netip.MustParsePrefix("::/0"), wantErr: "default route"},
		{name: "default v6 exit", in: netip.MustParsePrefix("::/0"), pol: Policy{AllowDefaultRoute: true}},
		{name: "ok", in: netip.MustParsePrefix("172.28.0.0/24")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateChildPrefix(tt.in, tt.pol)
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidPrefix)
			require.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestPrefixErrorTruncatesInput(t *testing.T) {
	long := strings.Repeat("1", 500) + "/8"
	_, err := ParsePrefix(long)
	require.ErrorIs(t, err, ErrInvalidPrefix)
	require.Less(t, len(err.Error()), 200)
}
