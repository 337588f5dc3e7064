package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseJoinToken: ParseJoinToken never panics, and what it accepts is
// a well-formed secret (and fingerprint) that formats back to a token
// parsing to the same values.
func FuzzParseJoinToken(f *testing.F) {
	secret := JoinTokenPrefix + strings.Repeat("0a", 16)
	fp := sha256.Sum256([]byte("cert"))
	for _, s := range []string{
		secret, secret + "." + hex.EncodeToString(fp[:]), " " + secret + " ", secret + ".", secret + ".zz",
		"wmj_", "wmd_" + strings.Repeat("0", 32), JoinTokenPrefix + strings.Repeat("g", 32), "", ".", secret + "." + secret,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		s, fp, err := ParseJoinToken(tok)
		if err != nil {
			if s != "" || fp != nil {
				t.Fatalf("error %v with results %q %x", err, s, fp)
			}
			return
		}
		if !strings.HasPrefix(s, JoinTokenPrefix) || len(s) != len(JoinTokenPrefix)+32 {
			t.Fatalf("accepted secret %q", s)
		}
		if _, err := hex.DecodeString(s[len(JoinTokenPrefix):]); err != nil {
			t.Fatalf("accepted non-hex secret %q", s)
		}
		if fp != nil && len(fp) != 32 {
			t.Fatalf("accepted fingerprint of %d bytes", len(fp))
		}
		s2, fp2, err := ParseJoinToken(FormatJoinToken(s, fp))
		if err != nil || s2 != s || !bytes.Equal(fp, fp2) {
			t.Fatalf("round trip of %q: %q %x %v", tok, s2, fp2, err)
		}
	})
}

// FuzzProof: a signed registration verifies for its join token only,
// after the JSON round trip the service sees, and any change to a signed
// field breaks it.
func FuzzProof(f *testing.F) {
	f.Add([]byte("device key"), "host", "default", "172.24.0.0/24", "192.0.2.1:51820", int64(1767225600), "nonce", []byte("wmj_secret"))
	f.Add([]byte{}, "", "", "", "", int64(0), "", []byte{})
	f.Add([]byte{0xff}, "h\nzone=\"x\"", "z\"", "a\"\nb", "[::1]:1", int64(-1), "n\n", []byte{0})
	var servicePriv Key
	copy(servicePriv[:], "the service's private key.......")
	servicePub := PublicKey(servicePriv)
	f.Fuzz(func(t *testing.T, keySeed []byte, host, zone, prefix, endpoint string, ts int64, nonce string, tok []byte) {
		var priv Key
		copy(priv[:], keySeed)
		r := RegisterRequest{PublicKey: PublicKey(priv), Hostname: host, Zone: zone, Timestamp: ts, Nonce: nonce}
		if prefix != "" {
			r.ChildPrefixes = []string{prefix}
		}
		if ep, err := netip.ParseAddrPort(endpoint); err == nil {
			r.Endpoints = []netip.AddrPort{ep}
		}
		th := JoinTokenHash(string(tok))
		if err := r.Sign(priv, servicePub, th); err != nil {
			t.Fatalf("sign: %v", err)
		}
		if err := r.Verify(servicePriv, th); err != nil {
			t.Fatalf("verify: %v", err)
		}
		other := th
		other[0] ^= 1
		if err := r.Verify(servicePriv, other); !errors.Is(err, ErrBadProof) {
			t.Fatalf("verified for another join token: %v", err)
		}
		changed := r
		changed.Hostname += "x"
		if changed.Verify(servicePriv, th) == nil {
			t.Fatal("verified with a changed hostname")
		}
		changed = r
		changed.Nonce += "x"
		if changed.Verify(servicePriv, th) == nil {
			t.Fatal("verified with a changed nonce")
		}
		for _, s := range []string{host, zone, prefix, nonce} {
			if !utf8.ValidString(s) {
				return // JSON replaces invalid UTF-8: the body is no longer the one signed
			}
		}
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		var got RegisterRequest
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("unmarshal %s: %v", b, err)
		}
		if err := got.Verify(servicePriv, th); err != nil {
			t.Fatalf("verify after JSON round trip of %s: %v", b, err)
		}
	})
}

// FuzzVerifyDecoded: whatever a body decodes to, Verify answers without
// panicking, and only a proof made with the key verifies (so a random
// body practically never does).
func FuzzVerifyDecoded(f *testing.F) {
	f.Add([]byte(`{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","hostname":"h","timestamp":1,"proof":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	f.Add([]byte(`{"public_key":"4HMOc0Na8e/uVWDAqESdfmAMT4s/YnHj4D3VbGvBhlY=","proof":""}`))
	f.Add([]byte(`{}`))
	var servicePriv Key
	copy(servicePriv[:], "the service's private key.......")
	f.Fuzz(func(t *testing.T, body []byte) {
		var r RegisterRequest
		if json.Unmarshal(body, &r) != nil {
			return
		}
		if err := r.Verify(servicePriv, JoinTokenHash("wmj_x")); err == nil {
			t.Fatalf("a fuzzed body verified: %s", body)
		}
	})
}
