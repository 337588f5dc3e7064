package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// testRecordProof: RecordProof spends a proof on its own (no registration
// needed), shares its memory with Register, and forgets expired proofs.
func testRecordProof(t *testing.T, e *Env) {
	exp := Now.Add(5 * time.Minute)
	require.NoError(t, e.S.RecordProof(e.Ctx, []byte("p1"), exp, Now))
	require.ErrorIs(t, e.S.RecordProof(e.Ctx, []byte("p1"), exp, Now), store.ErrReplayed)
	require.NoError(t, e.S.RecordProof(e.Ctx, []byte("p2"), exp, Now), "other proofs are unaffected")
	require.Error(t, e.S.RecordProof(e.Ctx, nil, exp, Now), "an empty proof is refused")

	// A proof spent by RecordProof cannot register, and one spent by
	// Register cannot be recorded again.
	tok := e.Token(api.DefaultZone, true)
	_, _, err := e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: tok, Hostname: "h",
		Proof: []byte("p1"), ProofExpires: exp, Now: Now})
	require.ErrorIs(t, err, store.ErrReplayed)
	_, _, err = e.Register(store.RegisterParams{Zone: api.DefaultZone, JoinTokenHash: tok, Hostname: "h",
		Proof: []byte("p3"), ProofExpires: exp, Now: Now})
	require.NoError(t, err)
	require.ErrorIs(t, e.S.RecordProof(e.Ctx, []byte("p3"), exp, Now), store.ErrReplayed)

	// After expiry a proof is forgotten.
	later := exp.Add(time.Second)
	require.NoError(t, e.S.RecordProof(e.Ctx, []byte("p1"), later.Add(5*time.Minute), later))
}
