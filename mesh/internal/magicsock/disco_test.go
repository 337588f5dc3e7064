package magicsock

import (
	"testing"
	"time"

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
	at := time.UnixMilli(1_700_000_000_123)
	ping := appendDisco(nil, discoPing, pubOf(a), at, tx, kab)
	require.Len(t, ping, discoLen)
	require.True(t, isDisco(ping))
	require.False(t, isSTUN(ping))
	require.Zero(t, wgType(ping))
	require.Equal(t, pubOf(a), discoSender(ping))
	kind, gotAt, got, err := parseDisco(ping, kba)
	require.NoError(t, err)
	require.Equal(t, byte(discoPing), kind)
	require.Equal(t, tx, got)
	require.Equal(t, at.UnixMilli(), gotAt)

	// Someone without a's key claiming to be a.
	forged := appendDisco(nil, discoPing, pubOf(a), at, tx, kevil)
	_, _, _, err = parseDisco(forged, kba)
	require.ErrorIs(t, err, errDiscoMAC)
	// A flipped bit anywhere.
	for i := range ping {
		bad := append([]byte(nil), ping...)
		bad[i] ^= 1
		_, _, _, err := parseDisco(bad, kba)
		require.Error(t, err, "bit flipped in byte %d", i)
	}
	// A probe of version 1 (no time, another MAC key) is a probe (it
	// never reaches WireGuard) that does not parse.
	v1 := ping[:65]
	require.True(t, isDisco(v1))
	_, _, _, err = parseDisco(v1, kba)
	require.Error(t, err)
}

func TestDiscoFresh(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, tt := range []struct {
		name string
		age  time.Duration
		want bool
	}{
		{"now", 0, true},
		{"window old", discoWindow, true},
		{"window ahead", -discoWindow, true},
		{"too old", discoWindow + time.Millisecond, false},
		{"too far ahead", -discoWindow - time.Millisecond, false},
		{"replayed an hour later", time.Hour, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, fresh(now.Add(-tt.age).UnixMilli(), now))
		})
	}
}

// TestPingGuard: a ping is accepted once; once the guard forgets one,
// nothing at or before its time is accepted, so a forgotten ping cannot
// come back either.
func TestPingGuard(t *testing.T) {
	var g pingGuard
	const now = 2000 // within the window of every ping below
	tx0 := newTxID()
	require.True(t, g.accept(tx0, 1000, now))
	require.False(t, g.accept(tx0, 1000, now), "exact replay")
	require.False(t, g.accept(tx0, 2000, now), "the same id with another time")
	require.True(t, g.accept(newTxID(), 1000, now), "another ping of the same round")
	for i := range 2 * maxSeenPings {
		require.True(t, g.accept(newTxID(), int64(1001+i), now))
	}
	require.Len(t, g.seen, maxSeenPings)
	require.Len(t, g.order, maxSeenPings)
	require.False(t, g.accept(tx0, 1000, now), "forgotten, and refused by the floor")
	require.False(t, g.accept(newTxID(), g.floor, now), "no newer than the newest forgotten")
	require.True(t, g.accept(newTxID(), g.floor+1, now))
}

// TestPingGuardForgetsStale: pings older than the time window are
// forgotten (the window refuses them anyway), so a peer pinging once a
// minute keeps one entry, not a map sized for a busy peer; the floor
// still refuses what was forgotten.
func TestPingGuardForgetsStale(t *testing.T) {
	var g pingGuard
	window := discoWindow.Milliseconds()
	t0 := int64(1_000_000)
	txs := make([]txID, maxSeenPings)
	for i := range txs {
		txs[i] = newTxID()
		require.True(t, g.accept(txs[i], t0, t0))
	}
	require.Len(t, g.seen, maxSeenPings)

	// A minute later: everything before is forgotten.
	t1 := t0 + 2*window
	tx1 := newTxID()
	require.True(t, g.accept(tx1, t1, t1))
	require.Len(t, g.seen, 1)
	require.Len(t, g.order, 1)
	require.Equal(t, t0, g.floor)
	require.False(t, g.accept(txs[0], t0, t1), "forgotten, and refused by the floor")
	require.False(t, g.accept(tx1, t1, t1+1), "remembered")

	// Stale again: the old entry goes, the new one stays.
	t2 := t1 + 2*window
	require.True(t, g.accept(newTxID(), t2, t2))
	require.Len(t, g.seen, 1)
}

// FuzzParseDisco: nothing the network sends makes the parser panic or
// accept a probe without the key.
func FuzzParseDisco(f *testing.F) {
	k := make([]byte, 32)
	f.Add(appendDisco(nil, discoPong, pubOf(newKey()), time.Now(), newTxID(), k))
	f.Add([]byte(discoMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		discoSender(b)
		if _, _, _, err := parseDisco(b, make([]byte, 32)); err == nil {
			// Only a correctly MACed probe parses.
			require.Equal(t, discoMAC(make([]byte, 32), b[:discoMACOff]), b[discoMACOff:])
		}
		isSTUN(b)
		wgType(b)
	})
}
