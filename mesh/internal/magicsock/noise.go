package magicsock

import (
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"

	"github.com/wiremesh/wiremesh/control/api"
)

// Who sent a handshake initiation.
//
// A peer trimmed from the WireGuard device (see SetAsleep) is woken by
// the first packet it sends. Packets from a peer's known address or
// through the relay name the peer; a handshake initiation from an address
// the Conn does not know (a NAT mapping never seen before) does not, and
// wireguard-go would drop it, because the device does not know the
// initiator's key. WireGuard's Noise IK encrypts the initiator's static
// public key under a key derived from the responder's static key and the
// initiator's ephemeral key, so the responder can read it before it knows
// the peer: initiatorKey does that first step of wireguard-go's
// ConsumeMessageInitiation (device/noise-protocol.go) and nothing else (no
// timestamp, no replay check: the device does those once the peer is
// configured again). It checks mac1 first, as wireguard-go does, so that a
// datagram that is not an initiation for this node costs no X25519.

var (
	noiseConstruction = []byte("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
	wgIdentifier      = []byte("WireGuard v1 zx2c4 Jason@zx2c4.com")
	wgLabelMAC1       = []byte("mac1----")

	initialChainKey [blake2s.Size]byte
	initialHash     [blake2s.Size]byte
)

func init() {
	initialChainKey = blake2s.Sum256(noiseConstruction)
	initialHash = blake2s.Sum256(append(initialChainKey[:], wgIdentifier...))
}

// Offsets in a handshake initiation (148 bytes): type (4), sender index
// (4), ephemeral (32), encrypted static (32+16), encrypted timestamp
// (12+16), mac1 (16), mac2 (16).
const (
	initEphemeralOff = 8
	initStaticOff    = initEphemeralOff + 32
	initStaticLen    = 32 + chacha20poly1305.Overhead
	initTimestampOff = initStaticOff + initStaticLen
	initMAC1Off      = initTimestampOff + 12 + chacha20poly1305.Overhead
	initLen          = initMAC1Off + 32
)

// initiatorKeys is what initiatorKey needs of the node's own static key.
type initiatorKeys struct {
	priv, pub api.Key
	mac1Key   [blake2s.Size]byte // BLAKE2s(label-mac1 || pub)
	hash0     [blake2s.Size]byte // MixHash(initial hash, pub)
}

func newInitiatorKeys(priv, pub api.Key) *initiatorKeys {
	k := &initiatorKeys{priv: priv, pub: pub}
	h, _ := blake2s.New256(nil)
	h.Write(wgLabelMAC1)
	h.Write(pub[:])
	h.Sum(k.mac1Key[:0])
	mixHash(&k.hash0, &initialHash, pub[:])
	return k
}

// initiatorKey returns the static public key of the peer that sent b, a
// handshake initiation to this node; ok is false when b is not one (wrong
// length or type, bad mac1, a static key that does not decrypt).
func (k *initiatorKeys) initiatorKey(b []byte) (key api.Key, ok bool) {
	if !k.isInitiation(b) {
		return api.Key{}, false
	}
	return k.readInitiator(b)
}

// isInitiation reports whether b is a handshake initiation to this node:
// its length, type and mac1 (which needs only the node's public key:
// anyone can make one).
func (k *initiatorKeys) isInitiation(b []byte) bool {
	if len(b) != initLen || wgType(b) != wgInitiation {
		return false
	}
	var mac [blake2s.Size128]byte
	m, _ := blake2s.New128(k.mac1Key[:])
	m.Write(b[:initMAC1Off])
	m.Sum(mac[:0])
	return subtle.ConstantTimeCompare(mac[:], b[initMAC1Off:initMAC1Off+16]) == 1
}

// readInitiator is initiatorKey after isInitiation: it costs an X25519.
func (k *initiatorKeys) readInitiator(b []byte) (key api.Key, ok bool) {
	x25519Calls.Add(1)
	eph := b[initEphemeralOff : initEphemeralOff+32]
	var hash, chainKey, aeadKey [blake2s.Size]byte
	mixHash(&hash, &k.hash0, eph)
	kdf1(&chainKey, initialChainKey[:], eph)
	ss, err := curve25519.X25519(k.priv[:], eph)
	if err != nil {
		return api.Key{}, false // a low-order ephemeral key
	}
	kdf2(&chainKey, &aeadKey, chainKey[:], ss)
	aead, err := chacha20poly1305.New(aeadKey[:])
	if err != nil {
		return api.Key{}, false
	}
	var nonce [chacha20poly1305.NonceSize]byte
	out, err := aead.Open(key[:0], nonce[:], b[initStaticOff:initStaticOff+initStaticLen], hash[:])
	if err != nil || len(out) != len(key) {
		return api.Key{}, false
	}
	return key, true
}

func mixHash(dst, h *[blake2s.Size]byte, data []byte) {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	d.Sum(dst[:0])
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

func hmac1(sum *[blake2s.Size]byte, key, in0 []byte) {
	m := hmac.New(newBlake2s, key)
	m.Write(in0)
	m.Sum(sum[:0])
}

func hmac2(sum *[blake2s.Size]byte, key, in0, in1 []byte) {
	m := hmac.New(newBlake2s, key)
	m.Write(in0)
	m.Write(in1)
	m.Sum(sum[:0])
}

// kdf1 and kdf2 are WireGuard's HKDF over HMAC-BLAKE2s (device/kdf.go).
func kdf1(t0 *[blake2s.Size]byte, key, input []byte) {
	var prk [blake2s.Size]byte
	hmac1(&prk, key, input)
	hmac1(t0, prk[:], []byte{0x1})
}

func kdf2(t0, t1 *[blake2s.Size]byte, key, input []byte) {
	var prk [blake2s.Size]byte
	hmac1(&prk, key, input)
	hmac1(t0, prk[:], []byte{0x1})
	hmac2(t1, prk[:], t0[:], []byte{0x2})
}
