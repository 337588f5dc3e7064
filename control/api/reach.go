package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// CandidateType says how a member learned an address where it may be
// reached with WireGuard UDP.
type CandidateType string

// Candidate types, in the order a member prefers them when several work.
const (
	// CandidateLocal is an address of one of the member's own interfaces:
	// it works from the same network (or when the member has a public
	// address).
	CandidateLocal CandidateType = "local"
	// CandidateManual is configured by the member's operator
	// (mesh.WithEndpoints, --endpoint): a port forward, a public address.
	CandidateManual CandidateType = "manual"
	// CandidateReflexive is the member's address as the service's STUN
	// responder saw it, learned from the WireGuard socket itself: the NAT
	// mapping of that socket.
	CandidateReflexive CandidateType = "reflexive"
)

// Valid reports whether t is one of the known candidate types.
func (t CandidateType) Valid() bool {
	switch t {
	case CandidateLocal, CandidateManual, CandidateReflexive:
		return true
	}
	return false
}

// Candidate is one address where a member may be reached.
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Type CandidateType  `json:"type"`
}

// NATType is what a member learned about the NAT in front of it by asking
// the service's two STUN ports from the same socket.
type NATType string

const (
	// NATUnknown: fewer than two STUN answers (no STUN, UDP blocked).
	NATUnknown NATType = ""
	// NATNone: the reflexive address is one of the member's own.
	NATNone NATType = "none"
	// NATEndpointIndependent: both STUN ports saw the same reflexive
	// address, so peers may reach the member there (hole punching).
	NATEndpointIndependent NATType = "endpoint-independent"
	// NATSymmetric: the two STUN ports saw different reflexive addresses:
	// the mapping depends on the destination, so the reflexive address is
	// of no use to peers; expect the relay unless the peer is reachable.
	NATSymmetric NATType = "symmetric"
)

// Valid reports whether t is one of the known NAT types.
func (t NATType) Valid() bool {
	switch t {
	case NATUnknown, NATNone, NATEndpointIndependent, NATSymmetric:
		return true
	}
	return false
}

// CandidateAddrs returns the addresses of cs, in order, without duplicates.
func CandidateAddrs(cs []Candidate) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(cs))
	seen := make(map[netip.AddrPort]bool, len(cs))
	for _, c := range cs {
		if !seen[c.Addr] {
			seen[c.Addr] = true
			out = append(out, c.Addr)
		}
	}
	return out
}

// Relay protocol (GET /v1/relay, device token, upgraded to WebSocket).
//
// Every WebSocket message is binary and carries one or more WireGuard
// datagrams for one peer: a 32-byte public key followed by datagrams, each
// a big-endian uint16 length and that many bytes. From member to relay the
// key is the destination; from relay to member it is the source, written by
// the relay from the sender's authenticated device (a member cannot claim
// another key). The relay forwards only between members of one zone and
// never looks inside the datagrams. A message longer than RelayMaxMessage
// closes the connection.
//
// A member's newest connection receives what is relayed to it. A
// connection opened with RelayProbeQuery (a reachability check such as
// wiremesh netcheck) never does: it may only send, and leaves the member's
// own connection in place. (Services without it treat a probe as a
// connection and hand reception back to the member's older connection
// when the probe closes.)
const (
	// RelayPath is the relay's HTTP path.
	RelayPath = "/v1/relay"
	// RelayProbeQuery is the query that opens a probe-only relay
	// connection: RelayPath + "?" + RelayProbeQuery.
	RelayProbeQuery = "probe=1"
	// RelayMaxMessage is the largest relay message.
	RelayMaxMessage = 256 << 10
	// RelayMaxDatagram is the largest datagram in a relay message.
	RelayMaxDatagram = 1<<16 - 1
)

// ErrRelayMessage is returned by ParseRelayMessage for a malformed message.
var ErrRelayMessage = errors.New("malformed relay message")

// AppendRelayDatagram appends one datagram (length and bytes) to a relay
// message that already holds its key.
func AppendRelayDatagram(msg, d []byte) ([]byte, error) {
	if len(d) > RelayMaxDatagram {
		return msg, fmt.Errorf("relay datagram of %d bytes: %w", len(d), ErrRelayMessage)
	}
	msg = binary.BigEndian.AppendUint16(msg, uint16(len(d)))
	return append(msg, d...), nil
}

// ParseRelayMessage splits a relay message into its key and datagrams
// (which alias msg). It rejects an empty message, a short key and a
// truncated datagram.
func ParseRelayMessage(msg []byte, each func(d []byte)) (Key, error) {
	var k Key
	if len(msg) <= len(k) || len(msg) > RelayMaxMessage {
		return k, fmt.Errorf("relay message of %d bytes: %w", len(msg), ErrRelayMessage)
	}
	copy(k[:], msg)
	rest := msg[len(k):]
	for len(rest) > 0 {
		if len(rest) < 2 {
			return k, fmt.Errorf("truncated datagram length: %w", ErrRelayMessage)
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return k, fmt.Errorf("datagram of %d bytes with %d left: %w", n, len(rest)-2, ErrRelayMessage)
		}
		if each != nil {
			each(rest[2 : 2+n])
		}
		rest = rest[2+n:]
	}
	return k, nil
}
