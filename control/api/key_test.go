package api

import (
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/curve25519"
)

// keyFromInt is the little-endian 32-byte form of n (n < 2^256).
func keyFromInt(t *testing.T, n *big.Int) Key {
	t.Helper()
	var k Key
	b := n.Bytes() // big-endian
	require.LessOrEqual(t, len(b), 32)
	for i, v := range b {
		k[len(b)-1-i] = v
	}
	return k
}

func TestCheckPublic(t *testing.T) {
	var priv Key
	_, err := rand.Read(priv[:])
	require.NoError(t, err)
	pub := PublicKey(priv)
	require.NoError(t, pub.CheckPublic())

	// The same private key behind the key with bit 255 set: X25519 gives
	// the same shared secret, so it must not pass as another device.
	alias := pub
	alias[31] |= 0x80
	var svc Key
	_, err = rand.Read(svc[:])
	require.NoError(t, err)
	s1, err := curve25519.X25519(svc[:], pub[:])
	require.NoError(t, err)
	s2, err := curve25519.X25519(svc[:], alias[:])
	require.NoError(t, err)
	require.Equal(t, s1, s2, "bit 255 is ignored by X25519")

	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	bad := map[string]Key{
		"zero":          {},
		"bit 255 set":   alias,
		"p":             keyFromInt(t, p),
		"p+9":           keyFromInt(t, new(big.Int).Add(p, big.NewInt(9))), // 9 again
		"2^255-1":       keyFromInt(t, new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(1))),
		"order 1 (u=1)": keyFromInt(t, big.NewInt(1)),
		"order 2 (p-1)": keyFromInt(t, new(big.Int).Sub(p, big.NewInt(1))),
	}
	for _, s := range []string{
		"325606250916557431795983626356110631294008115727848805560023387167927233504",
		"39382357235489614581723060781553021112529911719440698176882885853963445705823",
	} {
		n, ok := new(big.Int).SetString(s, 10)
		require.True(t, ok)
		bad["order 8 "+s[:6]] = keyFromInt(t, n)
	}
	for name, k := range bad {
		t.Run(name, func(t *testing.T) {
			err := k.CheckPublic()
			require.ErrorIs(t, err, ErrNonCanonicalKey)
			_, err = ParsePublicKey(k.String())
			require.ErrorIs(t, err, ErrNonCanonicalKey)
		})
	}
	// The base point and p-20 (the largest canonical u) are fine.
	require.NoError(t, keyFromInt(t, big.NewInt(9)).CheckPublic())
	require.NoError(t, keyFromInt(t, new(big.Int).Sub(p, big.NewInt(20))).CheckPublic())

	got, err := ParsePublicKey(pub.String())
	require.NoError(t, err)
	require.Equal(t, pub, got)
	_, err = ParsePublicKey(base64.StdEncoding.EncodeToString(make([]byte, 31)))
	require.ErrorContains(t, err, "31 bytes")
}
