package control

import (
	"context"
	"time"

	"github.com/wiremesh/wiremesh/control/store"
)

// The timed store.IdentityStore methods (see timedStore).

func (t *timedStore) RevokeDevice(ctx context.Context, id string, now time.Time) error {
	start := time.Now()
	err := t.st.RevokeDevice(ctx, id, now)
	t.done("revoke_device", start, err)
	return err
}

func (t *timedStore) RevokedKey(ctx context.Context, key store.Key) (bool, error) {
	return timed(t, "revoked_key", func() (bool, error) { return t.st.RevokedKey(ctx, key) })
}

func (t *timedStore) RotateKey(ctx context.Context, id string, key store.Key, now time.Time) (store.Device, error) {
	return timed(t, "rotate_key", func() (store.Device, error) { return t.st.RotateKey(ctx, id, key, now) })
}

func (t *timedStore) RotateDeviceToken(ctx context.Context, id string, h [32]byte, expires, now time.Time) error {
	start := time.Now()
	err := t.st.RotateDeviceToken(ctx, id, h, expires, now)
	t.done("rotate_device_token", start, err)
	return err
}

func (t *timedStore) UpdatePresence(ctx context.Context, p store.PresenceUpdate) ([]string, error) {
	return timed(t, "update_presence", func() ([]string, error) { return t.st.UpdatePresence(ctx, p) })
}

func (t *timedStore) DeleteEphemeral(ctx context.Context, cutoff, now time.Time) ([]store.Device, error) {
	return timed(t, "delete_ephemeral", func() ([]store.Device, error) { return t.st.DeleteEphemeral(ctx, cutoff, now) })
}

// The timed store.StatsStore methods.

func (t *timedStore) PutStats(ctx context.Context, s store.DeviceStats) error {
	start := time.Now()
	err := t.st.PutStats(ctx, s)
	t.done("put_stats", start, err)
	return err
}

func (t *timedStore) Stats(ctx context.Context, zone string) ([]store.DeviceStats, error) {
	return timed(t, "stats", func() ([]store.DeviceStats, error) { return t.st.Stats(ctx, zone) })
}
