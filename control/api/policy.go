package api

import (
	"encoding/json"
	"time"
)

// Error codes of a refused policy (400). Error.Line is the line of the
// policy document the error is about (1-based; 0 when it is about the whole
// document).
const (
	CodeInvalidPolicy   = "invalid_policy"   // 400: not a policy document: JSON syntax, unknown or missing field, wrong type, limits
	CodeUnknownTag      = "unknown_tag"      // 400: tag:NAME where NAME is not declared in "tags"
	CodeInvalidSelector = "invalid_selector" // 400: a malformed CIDR, address, hostname or tag name
	CodeInvalidPort     = "invalid_port"     // 400: a malformed or missing port (":80", ":8000-8099", ":*")
	CodeInvalidProto    = "invalid_proto"    // 400: proto other than tcp, udp, icmp or any; ports with icmp
)

// ZonePolicy is the answer of GET and PUT /v1/zones/{zone}/policy (admin).
//
// PUT takes the policy document itself as the body (application/json), so
// that the lines of an error (Error.Line) are the lines of the file the
// admin wrote. A refused document changes nothing: the policy in force stays.
// DELETE removes the policy: the zone allows everything again.
type ZonePolicy struct {
	Zone string `json:"zone"`
	// Document is the policy text exactly as set (a JSON document in a JSON
	// string, so that its lines survive), or "" when the zone has no policy
	// (everything allowed).
	Document string `json:"document"`
	// Revision is the watch revision at which the policy (or its removal)
	// took effect; 0 if the zone never had one.
	Revision  int64     `json:"revision"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// PolicyCheckRequest is the body of POST /v1/zones/{zone}/policy/check
// (admin): may From open a flow to To?
type PolicyCheckRequest struct {
	// From is a member's hostname (its tunnel address of To's family) or an
	// address (a member's tunnel address or one inside its child prefixes).
	From string `json:"from"`
	// To is HOST:PORT or ADDR:PORT ("[v6]:PORT" for IPv6): a member's
	// hostname (its tunnel IPv4 address) or an address of the zone.
	To string `json:"to"`
	// Proto is tcp (default), udp, icmp or any.
	Proto string `json:"proto,omitempty"`
}

// PolicyCheck is the answer of a policy check.
type PolicyCheck struct {
	Allowed bool `json:"allowed"`
	// Rule and Line name the policy rule that allows the flow (1-based
	// index and line of the document; 0 when the zone has no policy).
	Rule int `json:"rule,omitempty"`
	Line int `json:"line,omitempty"`
	// Src and Dst are the addresses checked, FromHost and ToHost the
	// members holding them ("" if none).
	Src      string `json:"src"`
	Dst      string `json:"dst"`
	FromHost string `json:"from_host,omitempty"`
	ToHost   string `json:"to_host,omitempty"`
	// Reason says why, in a sentence.
	Reason string `json:"reason"`
	// Missing is, when the flow is denied between two members, a rule that
	// would allow it (JSON, ready to add to "rules").
	Missing json.RawMessage `json:"missing,omitempty"`
}
