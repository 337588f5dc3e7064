package magicsock

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"

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
//	magic (4) | kind (1) | sender public key (32) | transaction id (12) | MAC (16)
//
// The magic starts with 0xff, which no WireGuard message (types 1-4, the
// rest of the first word zero) and no STUN message (top two bits zero)
// starts with. The MAC is HMAC-SHA256, truncated to 16 bytes, over
// everything before it, keyed by HKDF-SHA256(X25519(own private, peer
// public), info discoInfo): only the two members of a pair can make one, so
// nobody can fake a working path. A pong echoes the ping's transaction id;
// a path counts as working only when a pong answers a ping this side sent
// to that very address, so replaying someone's ping from elsewhere earns a
// pong nobody can use.
const (
	discoMagic   = "\xffWMP"
	discoPing    = 1
	discoPong    = 2
	discoTxLen   = 12
	discoMACLen  = 16
	discoKeyOff  = len(discoMagic) + 1
	discoTxOff   = discoKeyOff + 32
	discoMACOff  = discoTxOff + discoTxLen
	discoLen     = discoMACOff + discoMACLen
	discoKeyInfo = "wiremesh disco v1"
)

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

// isDisco reports whether b looks like a probe (not checked yet).
func isDisco(b []byte) bool {
	return len(b) == discoLen && string(b[:len(discoMagic)]) == discoMagic
}

// discoSender returns the key a probe claims to come from.
func discoSender(b []byte) api.Key {
	var k api.Key
	copy(k[:], b[discoKeyOff:discoTxOff])
	return k
}

func discoMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(nil)[:discoMACLen]
}

// appendDisco appends a probe of kind from sender, MACed with key.
func appendDisco(dst []byte, kind byte, sender api.Key, tx txID, key []byte) []byte {
	start := len(dst)
	dst = append(dst, discoMagic...)
	dst = append(dst, kind)
	dst = append(dst, sender[:]...)
	dst = append(dst, tx[:]...)
	return append(dst, discoMAC(key, dst[start:])...)
}

var errDiscoMAC = errors.New("probe MAC does not verify")

// parseDisco checks a probe's MAC with key and returns its kind and
// transaction id.
func parseDisco(b []byte, key []byte) (kind byte, tx txID, err error) {
	if !isDisco(b) {
		return 0, tx, errors.New("not a probe")
	}
	if !hmac.Equal(discoMAC(key, b[:discoMACOff]), b[discoMACOff:]) {
		return 0, tx, errDiscoMAC
	}
	kind = b[len(discoMagic)]
	if kind != discoPing && kind != discoPong {
		return 0, tx, errors.New("unknown probe kind")
	}
	copy(tx[:], b[discoTxOff:discoMACOff])
	return kind, tx, nil
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
