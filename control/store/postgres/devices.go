package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

// deviceCols selects a device and its prefixes (in address order) in one
// row.
const deviceCols = `d.id, d.zone, d.public_key, d.hostname, d.ipv4, d.ipv6, d.endpoints, d.created_at, d.updated_at,
	d.tags, d.generation, d.ephemeral, d.online, d.last_seen, d.candidates, d.nat, ARRAY(SELECT p.prefix FROM prefixes p WHERE p.device_id = d.id ORDER BY p.prefix)`

// Register implements store.Store.Register: token check, allocation,
// prefixes, device token and change entry in one transaction.
func (s *Store) Register(ctx context.Context, p store.RegisterParams) (store.Device, bool, error) {
	op := fmt.Sprintf("register %q in zone %q", p.Hostname, p.Zone)
	if p.PublicKey.IsZero() {
		return store.Device{}, false, fmt.Errorf("postgres: %s: zero public key", op)
	}
	if err := store.CheckEndpoints(p.Endpoints); err != nil {
		return store.Device{}, false, fmt.Errorf("postgres: %s: %w", op, err)
	}
	p.Endpoints = nilIfEmpty(slices.Clone(p.Endpoints))
	now := s.clock(p.Now)

	var (
		d       store.Device
		created bool
	)
	err := s.write(ctx, op, func(tx pgx.Tx) error {
		d, created = store.Device{}, false // fn may run again after a conflict
		jt, err := useJoinToken(ctx, tx, p.JoinTokenHash, p.Zone, now)
		if err != nil {
			return err
		}
		if err := recordProof(ctx, tx, p.Proof, p.ProofExpires, now); err != nil {
			return err
		}
		z, err := loadZonePools(ctx, tx, p.Zone)
		if err != nil {
			return err
		}
		d, err = lockDevice(ctx, tx, `zone = $1 AND public_key = $2`, p.Zone, p.PublicKey[:])
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// After the device lock: a revocation or rotation of the key that
		// committed meanwhile is seen (a new statement, a new snapshot).
		if err := checkNotRevoked(ctx, tx, p.PublicKey); err != nil {
			return err
		}
		if err := lockZoneHostnames(ctx, tx, p.Zone); err != nil {
			return err
		}
		switch {
		case err == nil:
			if d.Hostname, err = uniqueHostname(ctx, tx, p.Zone, p.Hostname, d.ID); err != nil {
				return err
			}
			d.Endpoints, d.Tags, d.UpdatedAt, d.Ephemeral = p.Endpoints, nilIfEmpty(slices.Clone(jt.Tags)), now, p.Ephemeral
			d.Generation++                // a restart: peers start a new session at once
			d.Candidates, d.NAT = nil, "" // reported again after registering
			if err := updateDeviceRow(ctx, tx, d); err != nil {
				return err
			}
		case errors.Is(err, store.ErrNotFound):
			created = true
			if d, err = insertDevice(ctx, tx, z, p, jt.Tags, now); err != nil {
				return err
			}
		default:
			return err
		}
		if d.Prefixes, err = addPrefixes(ctx, tx, z, d, p.Prefixes); err != nil {
			return err
		}
		if err := addDeviceToken(ctx, tx, p.DeviceTokenHash, d.ID, p.DeviceTokenExpires, now); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeUpsert, d)
		return err
	})
	if err != nil {
		return store.Device{}, false, err
	}
	s.log.Debug("store: registered", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname,
		"ipv4", d.IPv4, "created", created)
	return d, created, nil
}

// maxAllocAttempts bounds how often insertDevice moves on to the next free
// address after losing one to a concurrent registration.
const maxAllocAttempts = 1000

// insertDevice allocates a host index and inserts a new device row. The
// insert runs in a savepoint: when a concurrent transaction (on any
// replica) committed the same index first, the unique constraint refuses
// it, and the allocation moves on to the next free index.
func insertDevice(ctx context.Context, tx pgx.Tx, z store.ZonePools, p store.RegisterParams, tags []string, now time.Time) (store.Device, error) {
	host, err := uniqueHostname(ctx, tx, z.Name, p.Hostname, "")
	if err != nil {
		return store.Device{}, err
	}
	d := store.Device{
		Ephemeral:  p.Ephemeral,
		Tags:       nilIfEmpty(slices.Clone(tags)),
		Generation: 1,
		ID:         store.NewDeviceID(),
		Zone:       z.Name,
		PublicKey:  p.PublicKey,
		Hostname:   host,
		Endpoints:  p.Endpoints,
		CreatedAt:  now,
		UpdatedAt:  now,
	}
	eps, err := encodeEndpoints(d.Endpoints)
	if err != nil {
		return store.Device{}, err
	}
	for range maxAllocAttempts {
		idx, err := allocIndex(ctx, tx, z, p.RequestedIPv4)
		if err != nil {
			return store.Device{}, err
		}
		v4, ok4 := z.V4.Addr(idx)
		v6, ok6 := z.V6.Addr(idx)
		if !ok4 || !ok6 {
			return store.Device{}, fmt.Errorf("host index %d outside the pools of zone %q: %w", idx, z.Name, store.ErrPoolExhausted)
		}
		d.IPv4, d.IPv6 = v4, v6
		err = savepoint(ctx, tx, func(sp pgx.Tx) error {
			_, err := sp.Exec(ctx, `
				INSERT INTO devices (id, zone, public_key, hostname, idx, ipv4, ipv6, endpoints, created_at, updated_at,
					tags, generation, hostname_fold, ephemeral)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
				d.ID, d.Zone, d.PublicKey[:], d.Hostname, int64(idx), v4, v6, eps, now.UnixNano(), now.UnixNano(),
				tagsOrEmpty(d.Tags), int64(d.Generation), store.FoldHostname(d.Hostname), d.Ephemeral)
			return err
		})
		if !addressTaken(err) {
			return d, err
		}
		if p.RequestedIPv4.IsValid() {
			return store.Device{}, fmt.Errorf("%w: %s was just taken by another registration", store.ErrAddrInUse, p.RequestedIPv4)
		}
	}
	return store.Device{}, fmt.Errorf("no free address found after %d attempts in zone %q", maxAllocAttempts, z.Name)
}

// addressTaken reports a unique violation on a device's tunnel address.
func addressTaken(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != codeUniqueViolation {
		return false
	}
	switch pe.ConstraintName {
	case "devices_zone_idx", "devices_zone_ipv4", "devices_zone_ipv6":
		return true
	}
	return false
}

// savepoint runs fn in a savepoint of tx, rolled back when fn fails, so
// that tx can go on after the error.
func savepoint(ctx context.Context, tx pgx.Tx, fn func(pgx.Tx) error) error {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(sp); err != nil {
		return errors.Join(err, sp.Rollback(ctx))
	}
	return sp.Commit(ctx)
}

// allocIndex returns the host index for a new device: the one of req when
// req is set (ErrAddrOutside, ErrAddrInUse), else the lowest free one
// (ErrPoolExhausted).
func allocIndex(ctx context.Context, tx pgx.Tx, z store.ZonePools, req netip.Addr) (uint64, error) {
	capacity := z.Capacity()
	if req.IsValid() {
		idx, ok := z.V4.Index(req)
		if !ok || idx > capacity {
			return 0, fmt.Errorf("%w: %s is not a usable address of %s", store.ErrAddrOutside, req, z.IPv4Pool)
		}
		var holder string
		err := tx.QueryRow(ctx, `SELECT hostname FROM devices WHERE zone = $1 AND idx = $2`,
			z.Name, int64(idx)).Scan(&holder)
		switch {
		case err == nil:
			return 0, fmt.Errorf("%w: %s is held by %q", store.ErrAddrInUse, req, holder)
		case !errors.Is(err, pgx.ErrNoRows):
			return 0, err
		}
		return idx, nil
	}
	var idx int64
	if err := tx.QueryRow(ctx, gapQuery, z.Name).Scan(&idx); err != nil {
		return 0, fmt.Errorf("find free address: %w", err)
	}
	if idx < 1 || uint64(idx) > capacity {
		return 0, fmt.Errorf("%w: zone %q (%s, %d addresses)", store.ErrPoolExhausted, z.Name, z.IPv4Pool, capacity)
	}
	return uint64(idx), nil
}

// gapQuery returns the lowest free host index of zone $1 (capacity not
// checked): 1, or the first used index, in index order, whose successor is
// free. Both probes use the (zone, idx) unique index.
const gapQuery = `
	SELECT CASE
		WHEN NOT EXISTS (SELECT 1 FROM devices WHERE zone = $1 AND idx = 1) THEN 1
		ELSE (SELECT d.idx + 1 FROM devices d
			WHERE d.zone = $1
			AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.zone = $1 AND e.idx = d.idx + 1)
			ORDER BY d.idx LIMIT 1)
	END`

func updateDeviceRow(ctx context.Context, tx pgx.Tx, d store.Device) error {
	eps, err := encodeEndpoints(d.Endpoints)
	if err != nil {
		return err
	}
	cands, err := store.EncodeCandidates(d.Candidates)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE devices SET hostname = $1, endpoints = $2, updated_at = $3, tags = $4, generation = $5,
		hostname_fold = $6, ephemeral = $7, candidates = $8, nat = $9 WHERE id = $10`,
		d.Hostname, eps, d.UpdatedAt.UnixNano(), tagsOrEmpty(d.Tags), int64(d.Generation),
		store.FoldHostname(d.Hostname), d.Ephemeral, cands, d.NAT, d.ID)
	return err
}

// UpdateDevice implements store.Store.UpdateDevice. An update that changes
// nothing writes nothing and records no change.
func (s *Store) UpdateDevice(ctx context.Context, id string, p store.UpdateParams) (store.Device, error) {
	op := fmt.Sprintf("update device %q", id)
	if p.Endpoints != nil {
		if err := store.CheckEndpoints(*p.Endpoints); err != nil {
			return store.Device{}, fmt.Errorf("postgres: %s: %w", op, err)
		}
	}
	if p.Candidates != nil {
		if err := store.CheckCandidates(*p.Candidates); err != nil {
			return store.Device{}, fmt.Errorf("postgres: %s: %w", op, err)
		}
	}
	now := s.clock(p.Now)
	var d store.Device
	err := s.write(ctx, op, func(tx pgx.Tx) error {
		var err error
		if d, err = lockDevice(ctx, tx, `id = $1`, id); err != nil {
			return err
		}
		changed := false
		if p.Hostname != nil {
			if err := lockZoneHostnames(ctx, tx, d.Zone); err != nil {
				return err
			}
			h, err := uniqueHostname(ctx, tx, d.Zone, *p.Hostname, d.ID)
			if err != nil {
				return err
			}
			if h != d.Hostname {
				d.Hostname, changed = h, true
			}
		}
		if store.ApplyReach(&d, p) {
			changed = true
		}
		z, err := loadZonePools(ctx, tx, d.Zone)
		if err != nil {
			return err
		}
		before := len(d.Prefixes)
		if d.Prefixes, err = addPrefixes(ctx, tx, z, d, p.AddPrefixes); err != nil {
			return err
		}
		if !changed && len(d.Prefixes) == before {
			return nil
		}
		d.UpdatedAt = now
		if err := updateDeviceRow(ctx, tx, d); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeUpsert, d)
		return err
	})
	if err != nil {
		return store.Device{}, err
	}
	return d, nil
}

// DeleteDevice implements store.Store.DeleteDevice.
func (s *Store) DeleteDevice(ctx context.Context, id string) error {
	return s.write(ctx, fmt.Sprintf("delete device %q", id), func(tx pgx.Tx) error {
		d, err := lockDevice(ctx, tx, `id = $1`, id)
		if err != nil {
			return err
		}
		// device_tokens and prefixes go by ON DELETE CASCADE.
		if _, err := tx.Exec(ctx, `DELETE FROM devices WHERE id = $1`, id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, store.ChangeRemove, d)
		return err
	})
}

// Device returns a device by id, or ErrNotFound.
func (s *Store) Device(ctx context.Context, id string) (store.Device, error) {
	var d store.Device
	err := s.read(ctx, fmt.Sprintf("device %q", id), func(tx pgx.Tx) error {
		var err error
		d, err = loadDevice(ctx, tx, `d.id = $1`, id)
		return err
	})
	return d, err
}

// DeviceByToken returns the device a device-token hash belongs to, or
// ErrNotFound.
func (s *Store) DeviceByToken(ctx context.Context, tokenHash [32]byte) (store.Device, error) {
	var d store.Device
	err := s.read(ctx, "device by token", func(tx pgx.Tx) error {
		var exp *int64
		err := tx.QueryRow(ctx, `SELECT expires_at FROM device_tokens WHERE hash = $1`, tokenHash[:]).Scan(&exp)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("device token: %w", store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		d, err = loadDevice(ctx, tx,
			`d.id = (SELECT device_id FROM device_tokens WHERE hash = $1)`, tokenHash[:])
		d.TokenExpires = fromNanos(exp)
		return err
	})
	return d, err
}

// Devices lists a zone's devices ("" = all zones) ordered by IPv4.
// ErrNotFound if a named zone does not exist.
func (s *Store) Devices(ctx context.Context, zone string) ([]store.Device, error) {
	var ds []store.Device
	err := s.read(ctx, fmt.Sprintf("devices of zone %q", zone), func(tx pgx.Tx) error {
		if zone != "" {
			if _, err := loadZone(ctx, tx, zone); err != nil {
				return err
			}
		}
		var err error
		ds, err = loadDevices(ctx, tx, zone)
		return err
	})
	return ds, err
}

// loadDevice reads one device, with its prefixes, matching where.
func loadDevice(ctx context.Context, tx pgx.Tx, where string, args ...any) (store.Device, error) {
	d, err := scanDevice(tx.QueryRow(ctx, `SELECT `+deviceCols+` FROM devices d WHERE `+where, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Device{}, fmt.Errorf("device: %w", store.ErrNotFound)
	}
	return d, err
}

// lockDevice locks the device row matching where until the transaction
// ends, so that concurrent changes of one device apply in turn, then reads
// the device with what the previous holder of the lock committed (a new
// statement: a new snapshot at READ COMMITTED).
func lockDevice(ctx context.Context, tx pgx.Tx, where string, args ...any) (store.Device, error) {
	var id string
	err := tx.QueryRow(ctx, `SELECT id FROM devices WHERE `+where+` FOR UPDATE`, args...).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Device{}, fmt.Errorf("device: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Device{}, err
	}
	return loadDevice(ctx, tx, `d.id = $1`, id)
}

// loadDevices reads a zone's devices ("" = all) ordered by IPv4, with
// their prefixes.
func loadDevices(ctx context.Context, tx pgx.Tx, zone string) ([]store.Device, error) {
	// Within a zone, host index order is IPv4 order.
	q := `SELECT ` + deviceCols + ` FROM devices d WHERE d.zone = $1 ORDER BY d.idx`
	if zone == "" {
		q = `SELECT ` + deviceCols + ` FROM devices d WHERE $1 = '' ORDER BY d.ipv4, d.zone COLLATE "C"`
	}
	rows, err := tx.Query(ctx, q, zone)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Device, error) { return scanDevice(r) })
}

func scanDevice(r pgx.Row) (store.Device, error) {
	var (
		d                store.Device
		key              []byte
		eps, cands       string
		created, updated int64
		generation       int64
		lastSeen         *int64
	)
	if err := r.Scan(&d.ID, &d.Zone, &key, &d.Hostname, &d.IPv4, &d.IPv6, &eps, &created, &updated,
		&d.Tags, &generation, &d.Ephemeral, &d.Online, &lastSeen, &cands, &d.NAT, &d.Prefixes); err != nil {
		return store.Device{}, err
	}
	if len(key) != len(d.PublicKey) {
		return store.Device{}, fmt.Errorf("device %q: stored public key of %d bytes", d.ID, len(key))
	}
	copy(d.PublicKey[:], key)
	if err := json.Unmarshal([]byte(eps), &d.Endpoints); err != nil {
		return store.Device{}, fmt.Errorf("device %q: stored endpoints: %w", d.ID, err)
	}
	d.Endpoints = nilIfEmpty(d.Endpoints)
	if err := json.Unmarshal([]byte(cands), &d.Candidates); err != nil {
		return store.Device{}, fmt.Errorf("device %q: stored candidates: %w", d.ID, err)
	}
	d.Candidates = nilIfEmpty(d.Candidates)
	d.Prefixes, d.Tags = nilIfEmpty(d.Prefixes), nilIfEmpty(d.Tags)
	slices.SortFunc(d.Prefixes, ipam.ComparePrefix)
	d.CreatedAt, d.UpdatedAt = fromNanos(&created), fromNanos(&updated)
	d.Generation = uint64(generation)
	d.LastSeen = fromNanos(lastSeen)
	return d, nil
}

func encodeEndpoints(eps []netip.AddrPort) (string, error) {
	if len(eps) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(eps)
	return string(b), err
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}
