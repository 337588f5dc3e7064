package magicsock

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDiscoAuth(t *testing.T) {
	a, b, evil := newKey(), newKey(), newKey()
	kab, err := discoKey(a, pubOf(b))
	require.NoError(t, err)
	kba, err := discoKey(b, pubOf(a))
	require.NoError(t, err)
	require.Equal(t, kab, kba, "both sides derive the same key")
	kevil, err := discoKey(evil, pubOf(b))
	require.NoError(t, err)

	tx := newTxID()
	ping := appendDisco(nil, discoPing, pubOf(a), tx, kab)
	require.True(t, isDisco(ping))
	require.False(t, isSTUN(ping))
	require.Zero(t, wgType(ping))
	require.Equal(t, pubOf(a), discoSender(ping))
	kind, got, err := parseDisco(ping, kba)
	require.NoError(t, err)
	require.Equal(t, byte(discoPing), kind)
	require.Equal(t, tx, got)

	// Someone without a's key claiming to be a.
	forged := appendDisco(nil, discoPing, pubOf(a), tx, kevil)
	_, _, err = parseDisco(forged, kba)
	require.ErrorIs(t, err, errDiscoMAC)
	// A flipped bit anywhere.
	for i := range ping {
		bad := append([]byte(nil), ping...)
		bad[i] ^= 1
		_, _, err := parseDisco(bad, kba)
		require.Error(t, err, "bit flipped in byte %d", i)
	}
}

// FuzzParseDisco: nothing the network sends makes the parser panic or
// accept a probe without the key.
func FuzzParseDisco(f *testing.F) {
	k := make([]byte, 32)
	f.Add(appendDisco(nil, discoPong, pubOf(newKey()), newTxID(), k))
	f.Add([]byte(discoMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, _, err := parseDisco(b, make([]byte, 32)); err == nil {
			// Only a correctly MACed probe parses.
			require.Equal(t, discoMAC(make([]byte, 32), b[:discoMACOff]), b[discoMACOff:])
		}
		isSTUN(b)
		wgType(b)
	})
}
