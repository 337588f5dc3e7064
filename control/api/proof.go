package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"
)

// ProofInfo is the HKDF info string of the registration proof key.
const ProofInfo = "wiremesh register proof v1"

// SigningBytes is the canonical text the registration proof covers: every
// field but Proof, one per line, in a fixed order, so both sides compute it
// byte for byte without depending on JSON encoding details.
func (r *RegisterRequest) SigningBytes() []byte {
	var b strings.Builder
	b.WriteString("wiremesh-register-v1\n")
	b.WriteString("public_key=" + r.PublicKey.String() + "\n")
	b.WriteString("hostname=" + strconv.Quote(r.Hostname) + "\n")
	b.WriteString("zone=" + strconv.Quote(r.Zone) + "\n")
	for _, p := range r.ChildPrefixes {
		b.WriteString("child_prefix=" + strconv.Quote(p) + "\n")
	}
	for _, e := range r.Endpoints {
		b.WriteString("endpoint=" + e.String() + "\n")
	}
	if r.RequestedIPv4.IsValid() {
		b.WriteString("requested_ipv4=" + r.RequestedIPv4.String() + "\n")
	}
	b.WriteString("timestamp=" + strconv.FormatInt(r.Timestamp, 10) + "\n")
	if r.Nonce != "" {
		b.WriteString("nonce=" + strconv.Quote(r.Nonce) + "\n")
	}
	return []byte(b.String())
}

// ProofKey derives the MAC key from one side's private key and the other
// side's public key: the device computes ProofKey(devicePriv, servicePub),
// the service ProofKey(servicePriv, devicePub); both get the same key.
func ProofKey(private, peerPublic Key) ([]byte, error) {
	shared, err := curve25519.X25519(private[:], peerPublic[:])
	if err != nil {
		return nil, err // low-order point
	}
	k := make([]byte, 32)
	if _, err := io.ReadFull(hkdf.New(sha256.New, shared, nil, []byte(ProofInfo)), k); err != nil {
		return nil, err
	}
	return k, nil
}

// Sign sets r.Proof using the device private key and the service public key.
func (r *RegisterRequest) Sign(devicePrivate, servicePublic Key) error {
	k, err := ProofKey(devicePrivate, servicePublic)
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, k)
	m.Write(r.SigningBytes())
	r.Proof = m.Sum(nil)
	return nil
}

// ErrBadProof is returned by Verify when the proof does not match.
var ErrBadProof = errors.New("registration proof does not verify")

// Verify checks r.Proof with the service private key against r.PublicKey.
func (r *RegisterRequest) Verify(servicePrivate Key) error {
	k, err := ProofKey(servicePrivate, r.PublicKey)
	if err != nil {
		return ErrBadProof
	}
	m := hmac.New(sha256.New, k)
	m.Write(r.SigningBytes())
	if !hmac.Equal(m.Sum(nil), r.Proof) {
		return ErrBadProof
	}
	return nil
}

// PublicKey returns the X25519 public key of a private key.
func PublicKey(private Key) Key {
	var pub Key
	p, _ := curve25519.X25519(private[:], curve25519.Basepoint)
	copy(pub[:], p)
	return pub
}
