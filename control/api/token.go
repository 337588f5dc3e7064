package api

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// Join tokens look like "wmj_<32 hex secret>" and, when the service uses
// TLS, carry the SHA-256 fingerprint of its certificate after a dot:
// "wmj_<secret>.<64 hex fingerprint>". The service only checks the part
// before the dot; the agent pins the fingerprint. Device tokens look like
// "wmd_<32 hex>".
const (
	JoinTokenPrefix   = "wmj_"
	DeviceTokenPrefix = "wmd_"
)

// FormatJoinToken joins a secret and an optional certificate fingerprint.
func FormatJoinToken(secret string, fingerprint []byte) string {
	if len(fingerprint) == 0 {
		return secret
	}
	return secret + "." + hex.EncodeToString(fingerprint)
}

// ParseJoinToken splits a join token into its secret and the pinned
// certificate fingerprint (nil when the token carries none).
func ParseJoinToken(tok string) (secret string, fingerprint []byte, err error) {
	secret, fp, hasFP := strings.Cut(strings.TrimSpace(tok), ".")
	if !strings.HasPrefix(secret, JoinTokenPrefix) || len(secret) != len(JoinTokenPrefix)+32 {
		return "", nil, fmt.Errorf("join token %q: not a wiremesh join token (want %s followed by 32 hex digits)", redact(tok), JoinTokenPrefix)
	}
	if _, err := hex.DecodeString(secret[len(JoinTokenPrefix):]); err != nil {
		return "", nil, fmt.Errorf("join token %q: secret is not hex", redact(tok))
	}
	if !hasFP {
		return secret, nil, nil
	}
	b, err := hex.DecodeString(fp)
	if err != nil || len(b) != 32 {
		return "", nil, fmt.Errorf("join token %q: fingerprint is not 64 hex digits", redact(tok))
	}
	return secret, b, nil
}

// redact keeps enough of a token to recognise it in an error message
// without printing the secret.
func redact(tok string) string {
	if len(tok) <= 8 {
		return tok
	}
	return tok[:8] + "…"
}
