package magicsock

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"

	"github.com/wiremesh/wiremesh/control/api"
)

// Path probes ("disco", after Tailscale's protocol of that name).
//
// A probe is a ping or a pong sent on the WireGuard socket, so that it
// takes exactly the path WireGuard packets would take and opens the same
// NAT mappings:
//
//	magic (4) | kind (1) | sender public key (32) | time (8) | transaction id (12) | MAC (16)
//
// The magic starts with 0xff, which no WireGuard message (types 1-4, the
// rest of the first word zero) and no STUN message (top two bits zero)
// starts with. The MAC is HMAC-SHA256, truncated to 16 bytes, over
// everything before it, keyed by HKDF-SHA256(X25519(own private, peer
// public), info discoInfo): only the two members of a pair can make one, so
// nobody can fake a working path. A pong echoes the ping's transaction id;
// a path counts as working only when a pong answers a ping this side sent
// to that very address.
//
// Time is when the probe was made, in Unix milliseconds (big-endian). A
// probe more than discoWindow away from the receiver's clock is dropped,
// and a ping whose transaction id the receiver has seen from that peer is
// dropped too (see pingGuard), so a captured ping cannot be replayed, from
// anywhere, to draw pongs or plant an address (except once after the
// receiver's guard for the peer is new: see pingGuard). Version 2 of the format
// (discoKeyInfo) added the time: a v1 probe (65 bytes, another MAC key) is
// dropped, so both members of a pair must run a version with v2 to find a
// direct path (they still reach each other through the relay); the first
// v1 probe from a peer is logged, so that a mixed-version mesh says why.
const (
	discoMagic   = "\xffWMP"
	discoPing    = 1
	discoPong    = 2
	discoTxLen   = 12
	discoMACLen  = 16
	discoKeyOff  = len(discoMagic) + 1
	discoTimeOff = discoKeyOff + 32
	discoTxOff   = discoTimeOff + 8
	discoMACOff  = discoTxOff + discoTxLen
	discoLen     = discoMACOff + discoMACLen
	discoKeyInfo = "wiremesh disco v2"

	// discoV1Len is the length of a v1 probe: magic, kind, sender key,
	// transaction id, MAC; no time. One is dropped, and logged once per
	// peer (Conn.olderProbe).
	discoV1Len = len(discoMagic) + 1 + 32 + discoTxLen + discoMACLen
)

// discoWindow is how far a probe's time may be from the receiver's clock:
// members' clocks must agree within it for a direct path (NTP keeps them
// within milliseconds; the service already refuses registrations more
// than 5 min off).
const discoWindow = 30 * time.Second

type txID [discoTxLen]byte

func newTxID() txID {
	var t txID
	_, _ = rand.Read(t[:])
	return t
}

// discoKey derives the MAC key a pair shares.
func discoKey(priv, peer api.Key) ([]byte, error) {
	shared, err := curve25519.X25519(priv[:], peer[:])
	if err != nil {
		return nil, err // a low-order peer key
	}
	k := make([]byte, 32)
	if _, err := io.ReadFull(hkdf.New(sha256.New, shared, nil, []byte(discoKeyInfo)), k); err != nil {
		return nil, err
	}
	return k, nil
}

// isDisco reports whether b looks like a probe (not checked yet): it
// starts with the magic, whatever its length (a probe of another version
// is dropped, not handed to WireGuard).
func isDisco(b []byte) bool {
	return len(b) >= len(discoMagic) && string(b[:len(discoMagic)]) == discoMagic
}

// discoSender returns the key a probe claims to come from (zero if b is
// too short to be one).
func discoSender(b []byte) api.Key {
	var k api.Key
	if len(b) == discoLen {
		copy(k[:], b[discoKeyOff:discoTimeOff])
	}
	return k
}

func discoMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(nil)[:discoMACLen]
}

// appendDisco appends a probe of kind from sender, made at, MACed with
// key.
func appendDisco(dst []byte, kind byte, sender api.Key, at time.Time, tx txID, key []byte) []byte {
	start := len(dst)
	dst = append(dst, discoMagic...)
	dst = append(dst, kind)
	dst = append(dst, sender[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(at.UnixMilli()))
	dst = append(dst, tx[:]...)
	return append(dst, discoMAC(key, dst[start:])...)
}

var errDiscoMAC = errors.New("probe MAC does not verify")

// parseDisco checks a probe's MAC with key and returns its kind, time
// (Unix milliseconds) and transaction id. The time is not checked here.
func parseDisco(b []byte, key []byte) (kind byte, at int64, tx txID, err error) {
	if !isDisco(b) || len(b) != discoLen {
		return 0, 0, tx, errors.New("not a probe of this version")
	}
	if !hmac.Equal(discoMAC(key, b[:discoMACOff]), b[discoMACOff:]) {
		return 0, 0, tx, errDiscoMAC
	}
	kind = b[len(discoMagic)]
	if kind != discoPing && kind != discoPong {
		return 0, 0, tx, errors.New("unknown probe kind")
	}
	at = int64(binary.BigEndian.Uint64(b[discoTimeOff:discoTxOff]))
	copy(tx[:], b[discoTxOff:discoMACOff])
	return kind, at, tx, nil
}

// fresh reports whether a probe made at (Unix milliseconds) is within
// discoWindow of now.
func fresh(at int64, now time.Time) bool {
	d := now.UnixMilli() - at
	return d <= discoWindow.Milliseconds() && d >= -discoWindow.Milliseconds()
}

// maxSeenPings bounds the transaction ids a peer's pingGuard remembers.
// A peer sends a ping per candidate per round (at most 16, rounds at
// least 150 ms apart, one every 2 s to a working path) and only the ones
// that reach this node count: 64 cover the window in practice; beyond,
// the floor keeps refusing what was forgotten.
const maxSeenPings = 64

// pingGuard refuses a ping seen before from one peer: it remembers the
// last maxSeenPings accepted (transaction id and time) and, once it
// forgets one, refuses every ping no newer than the newest forgotten.
// Together with the time window, an accepted ping is not accepted again
// by the same guard. The guard is in memory, one per peer: after the
// agent restarts, or the peer leaves the netmap and comes back (a new
// guard), a ping captured within the last discoWindow can be accepted
// once more. That costs one pong (rate-limited) and at most an address
// to probe; it changes no path (only a pong to a ping of ours does).
// Pings older than the window are forgotten (the window refuses them
// anyway): a peer probed once a minute, as a trimmed one is, leaves one
// entry or none, and an empty guard holds no map (a map never shrinks:
// one sized for a busy peer stayed 3 KiB for every peer of an idle full
// mesh).
type pingGuard struct {
	seen  map[txID]int64 // accepted, not forgotten: tx → time
	order []txID         // seen in acceptance order, oldest first
	floor int64          // pings at or before this time are refused
}

// accept records a ping made at with transaction id tx and reports whether
// it is new; now is the receiver's clock (unix milliseconds, as at).
func (g *pingGuard) accept(tx txID, at, now int64) bool {
	if at <= g.floor {
		return false
	}
	if _, ok := g.seen[tx]; ok {
		return false
	}
	stale := now - discoWindow.Milliseconds()
	n := 0
	for n < len(g.order) && (g.seen[g.order[n]] < stale || len(g.order)-n >= maxSeenPings) {
		g.floor = max(g.floor, g.seen[g.order[n]])
		delete(g.seen, g.order[n])
		n++
	}
	if n == len(g.order) {
		g.seen, g.order = nil, nil
	} else if n > 0 {
		g.order = append(g.order[:0], g.order[n:]...)
	}
	if g.seen == nil {
		g.seen = make(map[txID]int64)
	}
	g.seen[tx] = at
	g.order = append(g.order, tx)
	return true
}

// WireGuard message types and the STUN magic cookie, for telling the
// datagrams on the socket apart.
const (
	wgInitiation = 1
	wgResponse   = 2
	wgCookie     = 3
	wgTransport  = 4
	stunCookie   = 0x2112A442
)

// wgType returns the WireGuard message type of b, or 0.
func wgType(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	t := binary.LittleEndian.Uint32(b)
	if t < wgInitiation || t > wgTransport {
		return 0
	}
	return t
}

// isSTUN reports whether b is shaped like a STUN message (RFC 5389: top two
// bits zero, magic cookie at offset 4, length a multiple of 4).
func isSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xc0 == 0 && binary.BigEndian.Uint32(b[4:]) == stunCookie &&
		int(binary.BigEndian.Uint16(b[2:]))+20 == len(b)
}
