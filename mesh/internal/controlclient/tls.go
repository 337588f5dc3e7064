package controlclient

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
)

// FingerprintMismatchError is the handshake error when the service presents
// a certificate whose SHA-256 fingerprint is not the pinned one. It is never
// retried.
type FingerprintMismatchError struct {
	Got, Want []byte // SHA-256 of the leaf certificate (DER); the pinned value
}

func (e *FingerprintMismatchError) Error() string {
	return fmt.Sprintf("certificate fingerprint mismatch: got %s, want %s (token pins the service certificate)",
		hex.EncodeToString(e.Got), hex.EncodeToString(e.Want))
}

// Fingerprint returns the SHA-256 fingerprint of a DER certificate, the form
// join tokens carry.
func Fingerprint(der []byte) []byte {
	s := sha256.Sum256(der)
	return s[:]
}

// pinTLS makes conf accept exactly the leaf certificate whose fingerprint is
// want, instead of verifying a chain. VerifyConnection runs on resumed
// sessions too, unlike VerifyPeerCertificate.
func pinTLS(conf *tls.Config, want []byte) {
	want = append([]byte(nil), want...)
	conf.InsecureSkipVerify = true // replaced by the pin check below
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("service presented no certificate (token pins the service certificate)")
		}
		got := Fingerprint(cs.PeerCertificates[0].Raw)
		if subtle.ConstantTimeCompare(got, want) != 1 {
			return &FingerprintMismatchError{Got: got, Want: want}
		}
		return nil
	}
}
