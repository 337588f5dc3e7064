// Package policy is a zone's access policy: who may open flows to which
// addresses, protocols and ports. [Parse] reads the JSON document an admin
// writes; [Compile] turns it, with the zone's members, into what the service
// sends each member: the peers it may exchange traffic with and the inbound
// filter ([api.Filter]) it enforces.
//
// # The document
//
//	{
//	  "tags": {"web": ["node1", "node2"], "ops": []},
//	  "rules": [
//	    {"from": ["tag:ops"], "to": ["*:*"]},
//	    {"from": ["laptop", "10.1.0.0/16"], "to": ["tag:web:80,443", "172.24.0.0/24:8000-8099"], "proto": "tcp"}
//	  ]
//	}
//
// tags maps a tag name to hostnames; a device also carries the tags of the
// join token it registered with (`wiremesh token create --tag web`), so a tag
// used only through tokens is declared with an empty list. A selector is
// "*" (everything), "tag:NAME", a hostname (every member with that hostname,
// compared without case) or a CIDR prefix or address (a tunnel address, a
// child prefix or part of one). A tag or hostname means the members' tunnel
// addresses, not their child prefixes: name those by CIDR. Every "to"
// selector ends in ports: ":80", ":8000-8099", ":80,443" or ":*". proto is
// tcp, udp, icmp or any (the default); ports other than ":*" with any mean
// tcp and udp on those ports, and are refused with icmp.
//
// A policy denies every flow that no rule allows; replies to allowed flows
// always pass (the enforcer is stateful). A document that names an unknown
// tag or holds a malformed selector or port is refused whole ([*Error] with
// the line and a stable code of control/api).
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
)

// Limits of a policy document.
const (
	MaxDocumentBytes = 512 << 10 // bytes of JSON text
	MaxRules         = 1000      // rules
	MaxTags          = 1000      // declared tags
	MaxListLen       = 1000      // selectors in one from or to, hostnames in one tag
	MaxNameLen       = 63        // bytes of a tag name or hostname
)

// ErrInvalid is matched (errors.Is) by every *Error.
var ErrInvalid = errors.New("invalid policy")

// Error is a refused policy document: Code is one of api.CodeInvalidPolicy,
// api.CodeUnknownTag, api.CodeInvalidSelector, api.CodeInvalidPort and
// api.CodeInvalidProto; Line is the 1-based line of the document the error
// is about (0: the whole document).
type Error struct {
	Code string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("policy: %s: %s", e.Code, e.Msg)
	}
	return fmt.Sprintf("policy: line %d: %s: %s", e.Line, e.Code, e.Msg)
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Proto is a rule's protocol.
type Proto uint8

// Protocols.
const (
	ProtoAny Proto = iota
	ProtoTCP
	ProtoUDP
	ProtoICMP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return api.ProtoTCP
	case ProtoUDP:
		return api.ProtoUDP
	case ProtoICMP:
		return api.ProtoICMP
	default:
		return api.ProtoAny
	}
}

// ParseProto parses tcp, udp, icmp or any.
func ParseProto(s string) (Proto, bool) {
	switch s {
	case api.ProtoAny:
		return ProtoAny, true
	case api.ProtoTCP:
		return ProtoTCP, true
	case api.ProtoUDP:
		return ProtoUDP, true
	case api.ProtoICMP:
		return ProtoICMP, true
	}
	return 0, false
}

// Kind is what a selector names.
type Kind uint8

// Selector kinds.
const (
	KindAny  Kind = iota + 1 // "*"
	KindTag                  // "tag:NAME"
	KindHost                 // a hostname
	KindCIDR                 // a prefix or an address
)

// Selector names a set of addresses.
type Selector struct {
	Kind   Kind
	Name   string       // KindTag: the tag; KindHost: the hostname, lower case
	Prefix netip.Prefix // KindCIDR: canonical
	Line   int          // line in the document
}

func (s Selector) String() string {
	switch s.Kind {
	case KindAny:
		return "*"
	case KindTag:
		return "tag:" + s.Name
	case KindHost:
		return s.Name
	default:
		if s.Prefix.IsSingleIP() {
			return s.Prefix.Addr().String()
		}
		return s.Prefix.String()
	}
}

// Dest is a "to" selector with its ports (nil: every port).
type Dest struct {
	Selector
	Ports []api.PortRange
}

func (d Dest) String() string {
	head := d.Selector.String()
	if d.Kind == KindCIDR && d.Prefix.IsSingleIP() && d.Prefix.Addr().Is6() {
		head = "[" + head + "]"
	}
	if len(d.Ports) == 0 {
		return head + ":*"
	}
	s := make([]string, len(d.Ports))
	for i, p := range d.Ports {
		s[i] = p.String()
	}
	return head + ":" + strings.Join(s, ",")
}

// Rule allows flows from any of From to any of To with Proto.
type Rule struct {
	Line    int // line of the rule's opening brace
	From    []Selector
	To      []Dest
	Proto   Proto
	Comment string
}

// Policy is a parsed, valid policy document.
type Policy struct {
	// Tags maps each declared tag to its hostnames (lower case).
	Tags  map[string][]string
	Rules []Rule
}
