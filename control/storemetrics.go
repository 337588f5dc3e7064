package control

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/control/store"
)

// timedStore is a store.Store that observes the latency of every call in
// wiremesh_store_seconds{op,result}. Expected answers (not found, exists,
// conflicts, compacted, ...) count as "ok": result="error" means the store
// failed.
//
// It embeds the store, so a method added to store.Store later passes
// through (untimed) until it is added here.
type timedStore struct {
	store.Store
	st store.Store
	h  *prometheus.HistogramVec
}

var _ store.Store = (*timedStore)(nil)

func newTimedStore(st store.Store, h *prometheus.HistogramVec) *timedStore {
	return &timedStore{Store: st, st: st, h: h}
}

// Unwrap returns the store t times, so that its optional interfaces
// (store.ChangeListener) can be found.
func (t *timedStore) Unwrap() store.Store { return t.st }

// expectedStoreErrs are answers, not failures.
var expectedStoreErrs = []error{store.ErrNotFound, store.ErrExists, store.ErrTokenInvalid, store.ErrPoolExhausted,
	store.ErrAddrInUse, store.ErrAddrOutside, store.ErrCompacted, store.ErrReplayed, store.ErrPrefixConflict,
	store.ErrRevoked, store.ErrHostnameTaken,
	context.Canceled}

// done records one call of op that started at start and ended with err.
func (t *timedStore) done(op string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
		for _, e := range expectedStoreErrs {
			if errors.Is(err, e) {
				result = "ok"
				break
			}
		}
	}
	t.h.WithLabelValues(op, result).Observe(time.Since(start).Seconds())
}

// timed runs f as op and records its latency.
func timed[T any](t *timedStore, op string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	t.done(op, start, err)
	return v, err
}

func (t *timedStore) CreateZone(ctx context.Context, z store.Zone) error {
	start := time.Now()
	err := t.st.CreateZone(ctx, z)
	t.done("create_zone", start, err)
	return err
}

func (t *timedStore) Zone(ctx context.Context, name string) (store.Zone, error) {
	return timed(t, "zone", func() (store.Zone, error) { return t.st.Zone(ctx, name) })
}

func (t *timedStore) Zones(ctx context.Context) ([]store.Zone, error) {
	return timed(t, "zones", func() ([]store.Zone, error) { return t.st.Zones(ctx) })
}

func (t *timedStore) CreateJoinToken(ctx context.Context, jt store.JoinToken) error {
	start := time.Now()
	err := t.st.CreateJoinToken(ctx, jt)
	t.done("create_join_token", start, err)
	return err
}

func (t *timedStore) JoinTokens(ctx context.Context, zone string) ([]store.JoinToken, error) {
	return timed(t, "join_tokens", func() ([]store.JoinToken, error) { return t.st.JoinTokens(ctx, zone) })
}

func (t *timedStore) JoinTokenByHash(ctx context.Context, h [32]byte) (store.JoinToken, error) {
	return timed(t, "join_token_by_hash", func() (store.JoinToken, error) { return t.st.JoinTokenByHash(ctx, h) })
}

func (t *timedStore) DeleteJoinToken(ctx context.Context, id string) error {
	start := time.Now()
	err := t.st.DeleteJoinToken(ctx, id)
	t.done("delete_join_token", start, err)
	return err
}

func (t *timedStore) Register(ctx context.Context, p store.RegisterParams) (store.Device, bool, error) {
	start := time.Now()
	d, created, err := t.st.Register(ctx, p)
	t.done("register", start, err)
	return d, created, err
}

func (t *timedStore) DeviceByToken(ctx context.Context, h [32]byte) (store.Device, error) {
	return timed(t, "device_by_token", func() (store.Device, error) { return t.st.DeviceByToken(ctx, h) })
}

func (t *timedStore) Device(ctx context.Context, id string) (store.Device, error) {
	return timed(t, "device", func() (store.Device, error) { return t.st.Device(ctx, id) })
}

func (t *timedStore) Devices(ctx context.Context, zone string) ([]store.Device, error) {
	return timed(t, "devices", func() ([]store.Device, error) { return t.st.Devices(ctx, zone) })
}

func (t *timedStore) UpdateDevice(ctx context.Context, id string, p store.UpdateParams) (store.Device, error) {
	return timed(t, "update_device", func() (store.Device, error) { return t.st.UpdateDevice(ctx, id, p) })
}

func (t *timedStore) DeleteDevice(ctx context.Context, id string) error {
	start := time.Now()
	err := t.st.DeleteDevice(ctx, id)
	t.done("delete_device", start, err)
	return err
}

func (t *timedStore) ReleasePrefix(ctx context.Context, zone string, p netip.Prefix, deviceID string) error {
	start := time.Now()
	err := t.st.ReleasePrefix(ctx, zone, p, deviceID)
	t.done("release_prefix", start, err)
	return err
}

func (t *timedStore) Prefixes(ctx context.Context, zone string) ([]store.PrefixEntry, error) {
	return timed(t, "prefixes", func() ([]store.PrefixEntry, error) { return t.st.Prefixes(ctx, zone) })
}

func (t *timedStore) Policy(ctx context.Context, zone string) (store.ZonePolicy, error) {
	return timed(t, "policy", func() (store.ZonePolicy, error) { return t.st.Policy(ctx, zone) })
}

func (t *timedStore) SetPolicy(ctx context.Context, zone string, doc []byte, now time.Time) (store.ZonePolicy, error) {
	return timed(t, "set_policy", func() (store.ZonePolicy, error) { return t.st.SetPolicy(ctx, zone, doc, now) })
}

func (t *timedStore) Snapshot(ctx context.Context, zone string) (int64, []store.Device, error) {
	start := time.Now()
	rev, ds, err := t.st.Snapshot(ctx, zone)
	t.done("snapshot", start, err)
	return rev, ds, err
}

func (t *timedStore) Changes(ctx context.Context, zone string, since int64) ([]store.Change, int64, error) {
	start := time.Now()
	cs, rev, err := t.st.Changes(ctx, zone, since)
	t.done("changes", start, err)
	return cs, rev, err
}
