// Package tlspin trusts a TLS server by the SHA-256 fingerprint of its leaf
// certificate (the value join tokens carry) instead of a certificate chain.
// It is the one implementation of pinning used by the agent (mesh), the
// admin client and the service; it depends on the standard library only, so
// a program that only joins links nothing of the server.
package tlspin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Size is the length of a fingerprint in bytes.
const Size = sha256.Size

// ErrNoCertificate is the handshake error when a pinned server presents no
// certificate at all.
var ErrNoCertificate = errors.New("tlspin: the service presented no certificate")

// MismatchError is the handshake error when the server presents a leaf
// certificate whose fingerprint is not the pinned one. Retrying cannot help.
type MismatchError struct {
	Got, Want []byte // fingerprint of the presented leaf; the pinned value
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("service certificate fingerprint %s does not match the pinned %s",
		hex.EncodeToString(e.Got), hex.EncodeToString(e.Want))
}

// Fingerprint returns the SHA-256 of a DER-encoded certificate.
func Fingerprint(der []byte) []byte {
	sum := sha256.Sum256(der)
	return sum[:]
}

// Pin makes conf accept exactly the leaf certificate whose fingerprint is
// want (Size bytes), instead of verifying a chain and a host name. It uses
// VerifyConnection, which also runs on resumed sessions (unlike
// VerifyPeerCertificate). want is copied.
func Pin(conf *tls.Config, want []byte) {
	want = bytes.Clone(want)
	conf.InsecureSkipVerify = true // replaced by the pin check below
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return ErrNoCertificate
		}
		got := Fingerprint(cs.PeerCertificates[0].Raw)
		if subtle.ConstantTimeCompare(got, want) != 1 {
			return &MismatchError{Got: got, Want: bytes.Clone(want)}
		}
		return nil
	}
}

// ClientConfig returns a client TLS configuration (TLS 1.2 or later) that
// pins fp when it is set, and otherwise verifies the chain against roots
// (nil: the system roots) and the host name as usual.
func ClientConfig(fp []byte, roots *x509.CertPool) *tls.Config {
	conf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	if len(fp) != 0 {
		Pin(conf, fp)
	}
	return conf
}

// Check returns an error unless fp is empty (no pin) or Size bytes long.
func Check(fp []byte) error {
	if len(fp) != 0 && len(fp) != Size {
		return fmt.Errorf("certificate fingerprint: %d bytes, want %d (SHA-256)", len(fp), Size)
	}
	return nil
}

// Parse parses a fingerprint written in hex, with or without colons.
func Parse(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(s), ":", ""))
	if err != nil || len(b) != Size {
		return nil, fmt.Errorf("certificate fingerprint %q: want %d hex digits", s, 2*Size)
	}
	return b, nil
}

// FromCertFile returns the fingerprint of the first certificate in a PEM
// file (such as the service's DataDir/tls.crt).
func FromCertFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certificate fingerprint: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("certificate fingerprint: %s: no PEM certificate", path)
	}
	return Fingerprint(blk.Bytes), nil
}
