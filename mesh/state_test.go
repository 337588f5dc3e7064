package mesh

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/controlclient"
)

func TestStateKeyCreatedOnce(t *testing.T) {
	d := stateDir(filepath.Join(t.TempDir(), "state"))
	k1, err := d.loadKey()
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(string(d), keyFileName))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	k2, err := d.loadKey()
	require.NoError(t, err)
	require.Equal(t, k1, k2)

	require.NoError(t, os.WriteFile(filepath.Join(string(d), keyFileName), []byte("garbage\n"), 0o600))
	_, err = d.loadKey()
	require.ErrorContains(t, err, "corrupt")

	// Ephemeral: a new key each time, nothing on disk.
	e1, err := stateDir("").loadKey()
	require.NoError(t, err)
	e2, err := stateDir("").loadKey()
	require.NoError(t, err)
	require.NotEqual(t, e1, e2)
}

func TestStateSaveLoad(t *testing.T) {
	d := stateDir(t.TempDir())
	s, err := d.load()
	require.NoError(t, err)
	require.Nil(t, s)

	in := &savedState{
		URL: "https://x", DeviceID: "dev1", DeviceToken: "wmd_x", Zone: "default",
		IPv4: netip.MustParseAddr("100.64.0.3"), ZoneIPv4: netip.MustParsePrefix("100.64.0.0/16"),
		Peers:    []api.Peer{{ID: "p", Hostname: "h", PublicKey: api.Key{1}, IPv4: netip.MustParseAddr("100.64.0.4")}},
		Revision: 42, ListenPort: 5555,
	}
	require.NoError(t, d.save(in))
	out, err := d.load()
	require.NoError(t, err)
	require.Equal(t, in, out)
	require.True(t, out.registered("https://x"))
	require.False(t, out.registered("https://y"))
	fi, err := os.Stat(filepath.Join(string(d), stateFileName))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	entries, err := os.ReadDir(string(d))
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temp file left behind")

	// A corrupt file is an error and stays as it is.
	path := filepath.Join(string(d), stateFileName)
	require.NoError(t, os.WriteFile(path, []byte("{not json"), 0o600))
	_, err = d.load()
	require.ErrorContains(t, err, "corrupt")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "{not json", string(b))
}

func TestJoinRefusesCorruptState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, stateFileName)
	require.NoError(t, os.WriteFile(path, []byte("{broken"), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Join(ctx, "http://127.0.0.1:1", WithToken("wmj_00000000000000000000000000000000"), WithStateDir(dir))
	require.ErrorContains(t, err, "mesh.Join")
	require.ErrorContains(t, err, "corrupt")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "{broken", string(b))
}

func TestOptions(t *testing.T) {
	tests := []struct {
		name    string
		opt     Option
		wantErr string
	}{
		{"mtu low", WithMTU(100), "WithMTU(100)"},
		{"mtu ok", WithMTU(1280), ""},
		{"mode", WithMode(Mode(7)), "unknown mode"},
		{"endpoint", WithEndpoints(netip.AddrPort{}), "invalid endpoint"},
		{"endpoint port 0", WithEndpoints(netip.MustParseAddrPort("192.0.2.1:0")), "invalid endpoint"},
		{"endpoint ok", WithEndpoints(netip.MustParseAddrPort("192.0.2.1:51820")), ""},
		{"prefix host bits", WithChildPrefix(netip.MustParsePrefix("10.0.0.1/24")), "host bits"},
		{"prefix invalid", WithChildPrefix(netip.Prefix{}), "invalid prefix"},
		{"backoff", WithReconnectBackoff(time.Second, time.Millisecond), "want 0 < min <= max"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newConfig([]Option{tt.opt})
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
	_, err := newConfig([]Option{WithChildPrefix(netip.MustParsePrefix("10.0.0.1/24"))})
	require.ErrorIs(t, err, ErrInvalidPrefix)
}

func TestServiceErrorMatching(t *testing.T) {
	ae := &api.Error{Code: api.CodePrefixConflict, Message: "overlaps", Prefix: "10.0.0.0/24", Owner: "n1", Status: 409}
	err := wrapService("mesh.Join", ae)
	require.ErrorIs(t, err, ErrPrefixConflict)
	require.NotErrorIs(t, err, ErrUnauthorized)
	var got *api.Error
	require.ErrorAs(t, err, &got)
	require.Equal(t, "n1", got.Owner)
	require.Contains(t, err.Error(), "held by n1")
	require.False(t, isTransient(err))
	require.True(t, isTransient(&api.Error{Code: api.CodeUnavailable, Status: 503}))
	require.True(t, isTransient(errors.New("connection refused")))
	require.ErrorIs(t, &NoRouteError{Addr: netip.MustParseAddr("10.0.0.1")}, ErrNoRoute)
}

// Concurrent saveState calls (the watch goroutine, AdvertisePrefix,
// ReleasePrefix) land in order: once a call returns, the file holds the
// state it saw or a later one, never an older snapshot written late.
func TestSaveStateWritesInOrder(t *testing.T) {
	client, err := controlclient.New(controlclient.Config{URL: "http://127.0.0.1:1", InsecureHTTP: true})
	require.NoError(t, err)
	defer client.Close()
	dir := t.TempDir()
	n := &Node{url: "http://127.0.0.1:1", client: client, state: stateDir(dir), peers: map[api.Key]api.Peer{}}
	const writers, rounds = 8, 25
	var wg sync.WaitGroup
	var stale atomic.Int64
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				n.mu.Lock()
				n.revision++
				mine := n.revision
				n.mu.Unlock()
				if err := n.saveState(); err != nil {
					t.Error(err)
					return
				}
				s, err := stateDir(dir).load()
				if err != nil {
					t.Error(err)
					return
				}
				if s.Revision < mine {
					stale.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	require.Zero(t, stale.Load(), "writes that left an older state on disk")
	s, err := stateDir(dir).load()
	require.NoError(t, err)
	require.Equal(t, int64(writers*rounds), s.Revision, "the last write has the latest revision")
}
