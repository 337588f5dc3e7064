package meshtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

func TestServerRestartKeepsURLAndState(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
		tls  bool
	}{{"tls", nil, true}, {"insecure", []ServerOption{WithInsecureHTTP()}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := NewServer(t, tc.opts...)
			_, fp, err := api.ParseJoinToken(s.Token)
			require.NoError(t, err)
			require.Equal(t, tc.tls, fp != nil)
			s.CreateZone(t, "lab")
			tok := s.CreateToken(t, "lab")
			require.NotEmpty(t, tok)
			url, stun := s.URL, s.Service().STUNAddr()

			s.Stop()
			require.Nil(t, s.Service())
			s.Stop() // idempotent
			s.Start(t)
			require.Equal(t, url, s.URL)
			require.Equal(t, stun, s.Service().STUNAddr())
			z, err := s.AdminClient(t).Zone(ctx, "lab")
			require.NoError(t, err)
			require.Equal(t, "lab", z.Name)
			ts, err := s.AdminClient(t).Tokens(ctx, "")
			require.NoError(t, err)
			require.Len(t, ts, 2)
		})
	}
}

func TestOpenClose(t *testing.T) {
	s, err := Open(WithInsecureHTTP())
	require.NoError(t, err)
	require.DirExists(t, s.DataDir)
	require.NotNil(t, s.Service())
	_, fp, err := api.ParseJoinToken(s.Token)
	require.NoError(t, err)
	require.Nil(t, fp, "plain HTTP: no pin")
	s.Close()
	require.Nil(t, s.Service())
	require.NoDirExists(t, s.DataDir, "Close removes the directory Open made")
	s.Close() // idempotent
}
