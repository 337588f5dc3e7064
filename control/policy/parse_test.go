package policy

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

const goodDoc = `{
  "tags": {"web": ["Node1", "node2"], "ops": []},
  "rules": [
    {"from": ["tag:ops"], "to": ["*:*"]},
    {
      "comment": "laptop to the web tier",
      "from": ["laptop", "10.1.0.0/16", "100.64.0.9"],
      "to": ["tag:web:80,443", "172.24.0.0/24:8000-8099", "[fd00::1]:22", "fd00::/64:1-1024"],
      "proto": "tcp"
    },
    {"from": ["*"], "to": ["tag:web:*"], "proto": "icmp"}
  ]
}
`

func TestParseGood(t *testing.T) {
	p, err := Parse([]byte(goodDoc))
	require.NoError(t, err)
	require.Equal(t, map[string][]string{"web": {"node1", "node2"}, "ops": {}}, p.Tags)
	require.Len(t, p.Rules, 3)
	require.Equal(t, 4, p.Rules[0].Line)
	require.Equal(t, 5, p.Rules[1].Line)
	require.Equal(t, 11, p.Rules[2].Line)

	r := p.Rules[1]
	require.Equal(t, ProtoTCP, r.Proto)
	require.Equal(t, "laptop to the web tier", r.Comment)
	require.Equal(t, []Selector{
		{Kind: KindHost, Name: "laptop", Line: 7},
		{Kind: KindCIDR, Prefix: netip.MustParsePrefix("10.1.0.0/16"), Line: 7},
		{Kind: KindCIDR, Prefix: netip.MustParsePrefix("100.64.0.9/32"), Line: 7},
	}, r.From)
	var to []string
	for _, d := range r.To {
		to = append(to, d.String())
	}
	require.Equal(t, []string{"tag:web:80,443", "172.24.0.0/24:8000-8099", "[fd00::1]:22", "fd00::/64:1-1024"}, to)
	require.Nil(t, p.Rules[0].To[0].Ports, ":* is every port")
	require.Equal(t, ProtoAny, p.Rules[0].Proto, "proto defaults to any")
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		code      string
		line      int
		msg       string
	}{
		{"syntax", "{\n \"rules\": [\n  {\"from\": [\"*\"],, }\n]}", api.CodeInvalidPolicy, 3, "syntax"},
		{"truncated", "{\n\"rules\": [", api.CodeInvalidPolicy, 2, "end of the document"},
		{"not an object", `[]`, api.CodeInvalidPolicy, 1, "want an object"},
		{"unknown field", "{\n\"rulez\": []}", api.CodeInvalidPolicy, 2, `unknown field "rulez"`},
		{"unknown rule field", "{\"rules\": [\n{\"from\": [\"*\"], \"to\": [\"*:*\"],\n \"port\": 80}]}", api.CodeInvalidPolicy, 3, `unknown field "port"`},
		{"duplicate key", "{\"rules\": [],\n\"rules\": []}", api.CodeInvalidPolicy, 2, "twice"},
		{"trailing", "{}\n{}", api.CodeInvalidPolicy, 2, "trailing"},
		{"number", "{\"rules\": [{\"from\": [\n1]}]}", api.CodeInvalidPolicy, 2, "want a string, got the number 1"},
		{"no from", "{\"rules\": [\n {\"to\": [\"*:*\"]}]}", api.CodeInvalidPolicy, 2, `no "from"`},
		{"no to", "{\"rules\": [\n {\"from\": [\"*\"], \"to\": []}]}", api.CodeInvalidPolicy, 2, `no "to"`},
		{"unknown tag", "{\"tags\": {\"web\": []},\n\"rules\": [\n{\"from\": [\"tag:web\"],\n \"to\": [\"tag:db:5432\"]}]}", api.CodeUnknownTag, 4, `tag "db"`},
		{"unknown tag before tags", "{\"rules\": [{\"from\": [\"tag:x\"], \"to\": [\"*:*\"]}],\n\"tags\": {\"y\": []}}", api.CodeUnknownTag, 1, `tag "x"`},
		{"bad cidr", "{\"rules\": [{\"from\": [\"*\"],\n\"to\": [\"10.0.0.300/24:80\"]}]}", api.CodeInvalidSelector, 2, "not a CIDR"},
		{"host bits", "{\"rules\": [{\"from\": [\n\"172.24.0.5/24\"], \"to\": [\"*:*\"]}]}", api.CodeInvalidSelector, 2, "did you mean 172.24.0.0/24"},
		{"bad address", "{\"rules\": [{\"from\": [\"10.0.0\"], \"to\": [\"*:*\"]}]}", api.CodeInvalidSelector, 1, "not an IP address"},
		{"mapped", "{\"rules\": [{\"from\": [\"::ffff:10.0.0.1\"], \"to\": [\"*:*\"]}]}", api.CodeInvalidSelector, 1, "IPv4-mapped"},
		{"missing port", "{\"rules\": [{\"from\": [\"*\"],\n\n\"to\": [\"tag:web\"]}], \"tags\": {\"web\": []}}", api.CodeInvalidPort, 3, "needs ports"},
		{"missing port cidr6", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"fd00::1\"]}]}", api.CodeInvalidPort, 1, "needs ports"},
		{"missing port host", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"laptop\"]}]}", api.CodeInvalidPort, 1, "needs ports"},
		{"port zero", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"laptop:0\"]}]}", api.CodeInvalidPort, 1, "not a port"},
		{"port big", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"laptop:65536\"]}]}", api.CodeInvalidPort, 1, "not a port"},
		{"port reversed", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"laptop:90-80\"]}]}", api.CodeInvalidPort, 1, "above"},
		{"port word", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"laptop:http\"]}]}", api.CodeInvalidPort, 1, "not a port"},
		{"proto", "{\"rules\": [{\"from\": [\"*\"], \"to\": [\"*:*\"],\n\"proto\": \"sctp\"}]}", api.CodeInvalidProto, 2, "sctp"},
		{"icmp ports", "{\"rules\": [{\"from\": [\"*\"],\n\"to\": [\"*:80\"], \"proto\": \"icmp\"}]}", api.CodeInvalidProto, 2, "icmp has no ports"},
		{"bad tag name", "{\"tags\": {\n\"a b\": []}}", api.CodeInvalidSelector, 2, "not allowed"},
		{"tag member not host", "{\"tags\": {\"a\": [\n\"10.0.0.0/8\"]}}", api.CodeInvalidSelector, 2, "not a hostname"},
		{"bad hostname", "{\"rules\": [{\"from\": [\"a*b\"], \"to\": [\"*:*\"]}]}", api.CodeInvalidSelector, 1, "not allowed"},
		{"too big", `{"rules": []}` + strings.Repeat(" ", MaxDocumentBytes), api.CodeInvalidPolicy, 0, "over the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.doc))
			require.Nil(t, p)
			require.ErrorIs(t, err, ErrInvalid)
			var pe *Error
			require.True(t, errors.As(err, &pe))
			require.Equal(t, tt.code, pe.Code, "%v", err)
			require.Equal(t, tt.line, pe.Line, "%v", err)
			require.Contains(t, pe.Msg, tt.msg)
		})
	}
}

func TestParseEmpty(t *testing.T) {
	p, err := Parse([]byte(`{}`))
	require.NoError(t, err)
	require.Empty(t, p.Rules, "an empty policy denies everything")
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodDoc))
	f.Add([]byte(`{"rules": [{"from": ["*"], "to": ["*:*"]}]}`))
	f.Add([]byte(`{"tags": {"a": ["b"]}, "rules": [{"from": ["tag:a"], "to": ["[::1]:1-2,3"], "proto": "udp"}]}`))
	f.Add([]byte("{\n\"rules\": [\n{\"from\": [\"10.0.0.0/8\"], \"to\": [\"fd00::/8:*\"]}]}"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := Parse(doc)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code == "" || pe.Line < 0 || pe.Line > strings.Count(string(doc), "\n")+1 {
				t.Fatalf("error without code or with a line outside the document: %#v", err)
			}
			if api.StatusForCode(pe.Code) != 400 {
				t.Fatalf("code %q is not a 400", pe.Code)
			}
			return
		}
		// A parsed policy compiles and its rules print as selectors that
		// parse again to the same thing.
		members := []Member{
			{ID: "a", Hostname: "b", IPv4: netip.MustParseAddr("100.64.0.1"), IPv6: netip.MustParseAddr("fd00::1"), Tags: []string{"a"}},
			{ID: "c", Hostname: "d", IPv4: netip.MustParseAddr("100.64.0.2"), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}},
		}
		c := Compile(p, members, nil)
		for i := range members {
			f := c.Filter(i)
			for _, r := range f.Rules {
				if len(r.Dst) == 0 || len(r.Src) == 0 || r.Rule < 1 || r.Rule > len(p.Rules) {
					t.Fatalf("bad filter rule %+v", r)
				}
			}
			for j := range c.Peers(i).All() {
				if !c.Peers(j).Has(i) {
					t.Fatalf("peers not symmetric: %d sees %d", i, j)
				}
			}
		}
		for _, r := range p.Rules {
			for _, d := range r.To {
				back, err := parseDest(d.String(), d.Line)
				if err != nil || back.String() != d.String() {
					t.Fatalf("%q does not parse back: %v", d.String(), err)
				}
			}
		}
	})
}
