package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"strconv"
	"strings"
	"time"
)

// Identity calls of a member (device token):
//
//   - DELETE /v1/devices/self: the device leaves for good (204): its
//     addresses and prefixes are freed, its tokens stop working.
//   - POST /v1/devices/self/token: a new device token (RotateTokenResponse);
//     every other token of the device stops working.
//   - POST /v1/devices/self/key: a new WireGuard key (RotateKeyRequest,
//     answered with Device); addresses and prefixes are kept, the old key is
//     refused from then on (code revoked).
//
// Admin: DELETE /v1/devices/{id}?revoke=true deletes the device and refuses
// its key from then on: registering with it gives 401 revoked, whatever
// the join token.

// RotateTokenResponse is the answer of POST /v1/devices/self/token.
type RotateTokenResponse struct {
	DeviceToken string `json:"device_token"`
	// ExpiresAt is when DeviceToken expires (absent: never).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// RotateKeyRequest is the body of POST /v1/devices/self/key (device
// token). OldProof and NewProof are HMAC-SHA256 over SigningBytes keyed
// with ProofKey(old private, service public) and ProofKey(new private,
// service public): the caller holds both keys. Like a registration, each
// proof is accepted once, and Timestamp must be within
// Info.MaxClockSkewSeconds of the service clock.
type RotateKeyRequest struct {
	NewPublicKey Key    `json:"new_public_key"`
	Timestamp    int64  `json:"timestamp"`
	Nonce        string `json:"nonce,omitempty"`
	OldProof     []byte `json:"old_proof"`
	NewProof     []byte `json:"new_proof"`
}

// SigningBytes is the canonical text both proofs of a key rotation cover:
// the device, both keys, the timestamp and the nonce.
func (r *RotateKeyRequest) SigningBytes(deviceID string, oldKey Key) []byte {
	var b strings.Builder
	b.WriteString("wiremesh-rotate-key-v1\n")
	b.WriteString("device_id=" + strconv.Quote(deviceID) + "\n")
	b.WriteString("old_public_key=" + oldKey.String() + "\n")
	b.WriteString("new_public_key=" + r.NewPublicKey.String() + "\n")
	b.WriteString("timestamp=" + strconv.FormatInt(r.Timestamp, 10) + "\n")
	b.WriteString("nonce=" + strconv.Quote(r.Nonce) + "\n")
	return []byte(b.String())
}

// Sign sets NewPublicKey (from newPrivate) and both proofs for device
// deviceID whose current key is the public half of oldPrivate.
func (r *RotateKeyRequest) Sign(deviceID string, oldPrivate, newPrivate, servicePublic Key) error {
	r.NewPublicKey = PublicKey(newPrivate)
	msg := r.SigningBytes(deviceID, PublicKey(oldPrivate))
	var err error
	if r.OldProof, err = mac(oldPrivate, servicePublic, msg); err != nil {
		return err
	}
	r.NewProof, err = mac(newPrivate, servicePublic, msg)
	return err
}

// Verify checks both proofs with the service private key for device
// deviceID whose current key is oldKey.
func (r *RotateKeyRequest) Verify(servicePrivate Key, deviceID string, oldKey Key) error {
	msg := r.SigningBytes(deviceID, oldKey)
	for _, c := range []struct {
		key   Key
		proof []byte
	}{{oldKey, r.OldProof}, {r.NewPublicKey, r.NewProof}} {
		want, err := mac(servicePrivate, c.key, msg)
		if err != nil || !hmac.Equal(want, c.proof) {
			return ErrBadProof
		}
	}
	return nil
}

// mac is HMAC-SHA256 of msg keyed with ProofKey(private, peerPublic).
func mac(private, peerPublic Key, msg []byte) ([]byte, error) {
	k, err := ProofKey(private, peerPublic)
	if err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, k)
	m.Write(msg)
	return m.Sum(nil), nil
}
