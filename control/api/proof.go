package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"
)

// ProofInfo is the HKDF info string of the registration proof key.
const ProofInfo = "wiremesh register proof v1"

// JoinTokenHash is the SHA-256 of a join token's secret (the part before
// the fingerprint, as [ParseJoinToken] returns it). The registration proof
// covers it, and the service stores only this hash.
func JoinTokenHash(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// SigningBytes is the canonical text the registration proof covers: the
// hash of the join token the request is sent with, then every field but
// Proof, one per line, in a fixed order, so both sides compute it byte for
// byte without depending on JSON encoding details. Covering the token
// binds a signed body to it: a body refused for its token (spent, expired)
// is worthless with any other.
func (r *RegisterRequest) SigningBytes(joinTokenHash [32]byte) []byte {
	var b strings.Builder
	b.WriteString("wiremesh-register-v2\n")
	b.WriteString("join_token_sha256=" + hex.EncodeToString(joinTokenHash[:]) + "\n")
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
	if r.Ephemeral { // absent when false: older clients sign the same bytes
		b.WriteString("ephemeral=true\n")
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

// Sign sets r.Proof using the device private key and the service public
// key, for the join token whose secret hashes to joinTokenHash
// ([JoinTokenHash]). Sign a new Timestamp and Nonce for every attempt: the
// service accepts each proof once, whatever the outcome.
func (r *RegisterRequest) Sign(devicePrivate, servicePublic Key, joinTokenHash [32]byte) error {
	k, err := ProofKey(devicePrivate, servicePublic)
	if err != nil {
		return err
	}
	m := hmac.New(sha256.New, k)
	m.Write(r.SigningBytes(joinTokenHash))
	r.Proof = m.Sum(nil)
	return nil
}

// ErrBadProof is returned by Verify when the proof does not match.
var ErrBadProof = errors.New("registration proof does not verify")

// Verify checks r.Proof with the service private key against r.PublicKey,
// for the join token whose secret hashes to joinTokenHash.
func (r *RegisterRequest) Verify(servicePrivate Key, joinTokenHash [32]byte) error {
	k, err := ProofKey(servicePrivate, r.PublicKey)
	if err != nil {
		return ErrBadProof
	}
	m := hmac.New(sha256.New, k)
	m.Write(r.SigningBytes(joinTokenHash))
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
