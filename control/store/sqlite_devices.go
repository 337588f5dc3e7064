package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

const deviceCols = `d.id, d.zone, d.public_key, d.hostname, d.ipv4, d.ipv6, d.endpoints, d.created_at, d.updated_at, d.tags, d.generation,
	d.ephemeral, d.online, d.last_seen, d.candidates, d.nat`

// Register implements Store.Register: token check, allocation, prefixes,
// device token and change entry in one write transaction.
func (s *SQLite) Register(ctx context.Context, p RegisterParams) (Device, bool, error) {
	op := fmt.Sprintf("register %q in zone %q", p.Hostname, p.Zone)
	if p.PublicKey.IsZero() {
		return Device{}, false, fmt.Errorf("store: %s: zero public key", op)
	}
	if err := checkEndpoints(p.Endpoints); err != nil {
		return Device{}, false, fmt.Errorf("store: %s: %w", op, err)
	}
	p.Endpoints = nilIfEmpty(slices.Clone(p.Endpoints))
	now := s.clock(p.Now)

	var (
		d       Device
		created bool
	)
	err := s.write(ctx, op, func(tx *sql.Tx) error {
		d, created = Device{}, false // fn runs once, but keep it self-contained
		jt, err := useJoinToken(ctx, tx, p.JoinTokenHash, p.Zone, now)
		if err != nil {
			return err
		}
		if err := recordProof(ctx, tx, p.Proof, p.ProofExpires, now); err != nil {
			return err
		}
		if err := checkNotRevoked(ctx, tx, p.PublicKey); err != nil {
			return err
		}
		z, err := loadZonePools(ctx, tx, p.Zone)
		if err != nil {
			return err
		}
		d, err = loadDevice(ctx, tx, `d.zone = ? AND d.public_key = ?`, p.Zone, p.PublicKey[:])
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
		case errors.Is(err, ErrNotFound):
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
		_, err = s.appendChange(ctx, tx, ChangeUpsert, d)
		return err
	})
	if err != nil {
		return Device{}, false, err
	}
	s.log.Debug("store: registered", "zone", d.Zone, "id", d.ID, "hostname", d.Hostname,
		"ipv4", d.IPv4, "created", created)
	return d, created, nil
}

// insertDevice allocates a host index and inserts a new device row.
func insertDevice(ctx context.Context, tx *sql.Tx, z ZonePools, p RegisterParams, tags []string, now time.Time) (Device, error) {
	idx, err := allocIndex(ctx, tx, z, p.RequestedIPv4)
	if err != nil {
		return Device{}, err
	}
	host, err := uniqueHostname(ctx, tx, z.Name, p.Hostname, "")
	if err != nil {
		return Device{}, err
	}
	v4, ok4 := z.V4.Addr(idx)
	v6, ok6 := z.V6.Addr(idx)
	if !ok4 || !ok6 {
		return Device{}, fmt.Errorf("host index %d outside the pools of zone %q: %w", idx, z.Name, ErrPoolExhausted)
	}
	d := Device{
		ID:         newDeviceID(),
		Zone:       z.Name,
		PublicKey:  p.PublicKey,
		Hostname:   host,
		IPv4:       v4,
		IPv6:       v6,
		Endpoints:  p.Endpoints,
		Tags:       nilIfEmpty(slices.Clone(tags)),
		CreatedAt:  now,
		UpdatedAt:  now,
		Generation: 1,
		Ephemeral:  p.Ephemeral,
	}
	eps, err := encodeEndpoints(d.Endpoints)
	if err != nil {
		return Device{}, err
	}
	tj, err := encodeTags(d.Tags)
	if err != nil {
		return Device{}, err
	}
	_, err = tx.ExecContext(ctx, `
		INSERT INTO devices (id, zone, public_key, hostname, hostname_fold, idx, ipv4, ipv6, endpoints, created_at, updated_at, tags, generation, ephemeral)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		d.ID, d.Zone, d.PublicKey[:], d.Hostname, FoldHostname(d.Hostname), int64(idx), addrBytes(v4), addrBytes(v6), eps,
		now.UnixNano(), now.UnixNano(), tj, int64(d.Generation), d.Ephemeral)
	if err != nil {
		return Device{}, err
	}
	return d, nil
}

// allocIndex returns the host index for a new device: the one of req when
// req is set (ErrAddrOutside, ErrAddrInUse), else the lowest free one
// (ErrPoolExhausted). The gap search walks the (zone, idx) unique index in
// order and stops at the first index whose successor is free.
func allocIndex(ctx context.Context, tx *sql.Tx, z ZonePools, req netip.Addr) (uint64, error) {
	capacity := z.Capacity()
	if req.IsValid() {
		idx, ok := z.V4.Index(req)
		if !ok || idx > capacity {
			return 0, fmt.Errorf("%w: %s is not a usable address of %s", ErrAddrOutside, req, z.IPv4Pool)
		}
		var holder string
		err := tx.QueryRowContext(ctx, `SELECT hostname FROM devices WHERE zone = ? AND idx = ?`,
			z.Name, int64(idx)).Scan(&holder)
		switch {
		case err == nil:
			return 0, fmt.Errorf("%w: %s is held by %q", ErrAddrInUse, req, holder)
		case !errors.Is(err, sql.ErrNoRows):
			return 0, err
		}
		return idx, nil
	}
	var idx int64
	err := tx.QueryRowContext(ctx, gapQuery, z.Name).Scan(&idx)
	if err != nil {
		return 0, fmt.Errorf("find free address: %w", err)
	}
	if idx < 1 || uint64(idx) > capacity {
		return 0, fmt.Errorf("%w: zone %q (%s, %d addresses)", ErrPoolExhausted, z.Name, z.IPv4Pool, capacity)
	}
	return uint64(idx), nil
}

// gapQuery returns the lowest free host index of zone ?1 (capacity not
// checked): 1, or the first used index, in index order, whose successor is
// free.
const gapQuery = `
	SELECT CASE
		WHEN NOT EXISTS (SELECT 1 FROM devices WHERE zone = ?1 AND idx = 1) THEN 1
		ELSE (SELECT d.idx + 1 FROM devices d
			WHERE d.zone = ?1
			AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.zone = ?1 AND e.idx = d.idx + 1)
			ORDER BY d.idx LIMIT 1)
	END`

func updateDeviceRow(ctx context.Context, tx *sql.Tx, d Device) error {
	eps, err := encodeEndpoints(d.Endpoints)
	if err != nil {
		return err
	}
	tags, err := encodeTags(d.Tags)
	if err != nil {
		return err
	}
	cands, err := encodeCandidates(d.Candidates)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `UPDATE devices SET hostname = ?, hostname_fold = ?, endpoints = ?, updated_at = ?, tags = ?, generation = ?, ephemeral = ?, candidates = ?, nat = ? WHERE id = ?`,
		d.Hostname, FoldHostname(d.Hostname), eps, d.UpdatedAt.UnixNano(), tags, int64(d.Generation), d.Ephemeral, cands, d.NAT, d.ID)
	return err
}

// UpdateDevice implements Store.UpdateDevice. An update that changes
// nothing (same hostname and endpoints, prefixes already held) writes
// nothing and records no change.
func (s *SQLite) UpdateDevice(ctx context.Context, id string, p UpdateParams) (Device, error) {
	op := fmt.Sprintf("update device %q", id)
	if p.Endpoints != nil {
		if err := checkEndpoints(*p.Endpoints); err != nil {
			return Device{}, fmt.Errorf("store: %s: %w", op, err)
		}
	}
	if p.Candidates != nil {
		if err := checkCandidates(*p.Candidates); err != nil {
			return Device{}, fmt.Errorf("store: %s: %w", op, err)
		}
	}
	now := s.clock(p.Now)
	var d Device
	err := s.write(ctx, op, func(tx *sql.Tx) error {
		var err error
		if d, err = loadDevice(ctx, tx, `d.id = ?`, id); err != nil {
			return err
		}
		changed := false
		if p.Hostname != nil {
			h, err := uniqueHostname(ctx, tx, d.Zone, *p.Hostname, d.ID)
			if err != nil {
				return err
			}
			if h != d.Hostname {
				d.Hostname, changed = h, true
			}
		}
		if ApplyReach(&d, p) {
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
		_, err = s.appendChange(ctx, tx, ChangeUpsert, d)
		return err
	})
	if err != nil {
		return Device{}, err
	}
	return d, nil
}

// DeleteDevice implements Store.DeleteDevice.
func (s *SQLite) DeleteDevice(ctx context.Context, id string) error {
	return s.write(ctx, fmt.Sprintf("delete device %q", id), func(tx *sql.Tx) error {
		d, err := loadDevice(ctx, tx, `d.id = ?`, id)
		if err != nil {
			return err
		}
		// device_tokens and prefixes go by ON DELETE CASCADE.
		if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id); err != nil {
			return err
		}
		_, err = s.appendChange(ctx, tx, ChangeRemove, d)
		return err
	})
}

// Device returns a device by id, or ErrNotFound.
func (s *SQLite) Device(ctx context.Context, id string) (Device, error) {
	var d Device
	err := s.read(ctx, fmt.Sprintf("device %q", id), func(tx *sql.Tx) error {
		var err error
		d, err = loadDevice(ctx, tx, `d.id = ?`, id)
		return err
	})
	return d, err
}

// DeviceByToken returns the device a device-token hash belongs to, or
// ErrNotFound, with TokenExpires set.
func (s *SQLite) DeviceByToken(ctx context.Context, tokenHash [32]byte) (Device, error) {
	var d Device
	err := s.read(ctx, "device by token", func(tx *sql.Tx) error {
		var exp sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT expires_at FROM device_tokens WHERE hash = ?`, tokenHash[:]).Scan(&exp)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device token: %w", ErrNotFound)
		}
		if err != nil {
			return err
		}
		d, err = loadDevice(ctx, tx,
			`d.id = (SELECT device_id FROM device_tokens WHERE hash = ?)`, tokenHash[:])
		d.TokenExpires = fromNanos(exp)
		return err
	})
	return d, err
}

// Devices lists a zone's devices ("" = all zones) ordered by IPv4.
// ErrNotFound if a named zone does not exist.
func (s *SQLite) Devices(ctx context.Context, zone string) ([]Device, error) {
	var ds []Device
	err := s.read(ctx, fmt.Sprintf("devices of zone %q", zone), func(tx *sql.Tx) error {
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
func loadDevice(ctx context.Context, tx *sql.Tx, where string, args ...any) (Device, error) {
	d, err := scanDevice(tx.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices d WHERE `+where, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device: %w", ErrNotFound)
	}
	if err != nil {
		return Device{}, err
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT family, start, bits FROM prefixes WHERE device_id = ? ORDER BY family, start, bits`, d.ID)
	if err != nil {
		return Device{}, err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			fam, bits int
			start     []byte
		)
		if err := rows.Scan(&fam, &start, &bits); err != nil {
			return Device{}, err
		}
		p, err := prefixFromRow(fam, start, bits)
		if err != nil {
			return Device{}, fmt.Errorf("device %q: %w", d.ID, err)
		}
		d.Prefixes = append(d.Prefixes, p)
	}
	return d, rows.Err()
}

// loadDevices reads a zone's devices ("" = all) ordered by IPv4, with their
// prefixes, in two queries.
func loadDevices(ctx context.Context, tx *sql.Tx, zone string) ([]Device, error) {
	// Within a zone, host index order is IPv4 order.
	dq := `SELECT ` + deviceCols + ` FROM devices d WHERE d.zone = ?1 ORDER BY d.idx`
	pq := `SELECT device_id, family, start, bits FROM prefixes WHERE zone = ?1 ORDER BY family, start, bits`
	if zone == "" {
		dq = `SELECT ` + deviceCols + ` FROM devices d WHERE ?1 = '' ORDER BY d.ipv4, d.zone`
		pq = `SELECT device_id, family, start, bits FROM prefixes WHERE ?1 = '' ORDER BY family, start, bits`
	}
	rows, err := tx.QueryContext(ctx, dq, zone)
	if err != nil {
		return nil, err
	}
	var ds []Device
	byID := map[string]int{}
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		byID[d.ID] = len(ds)
		ds = append(ds, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	prows, err := tx.QueryContext(ctx, pq, zone)
	if err != nil {
		return nil, err
	}
	defer prows.Close()
	for prows.Next() {
		var (
			id        string
			fam, bits int
			start     []byte
		)
		if err := prows.Scan(&id, &fam, &start, &bits); err != nil {
			return nil, err
		}
		p, err := prefixFromRow(fam, start, bits)
		if err != nil {
			return nil, fmt.Errorf("device %q: %w", id, err)
		}
		if i, ok := byID[id]; ok {
			ds[i].Prefixes = append(ds[i].Prefixes, p)
		}
	}
	return ds, prows.Err()
}

func scanDevice(r scanner) (Device, error) {
	var (
		d                Device
		key, v4, v6      []byte
		eps, tags, cands string
		created, updated sql.NullInt64
		generation       int64
		lastSeen         sql.NullInt64
	)
	if err := r.Scan(&d.ID, &d.Zone, &key, &d.Hostname, &v4, &v6, &eps, &created, &updated, &tags, &generation,
		&d.Ephemeral, &d.Online, &lastSeen, &cands, &d.NAT); err != nil {
		return Device{}, err
	}
	if len(key) != len(d.PublicKey) {
		return Device{}, fmt.Errorf("device %q: stored public key of %d bytes", d.ID, len(key))
	}
	copy(d.PublicKey[:], key)
	var err error
	if d.IPv4, err = addrFromBytes(v4); err != nil {
		return Device{}, fmt.Errorf("device %q: IPv4: %w", d.ID, err)
	}
	if d.IPv6, err = addrFromBytes(v6); err != nil {
		return Device{}, fmt.Errorf("device %q: IPv6: %w", d.ID, err)
	}
	if err := json.Unmarshal([]byte(eps), &d.Endpoints); err != nil {
		return Device{}, fmt.Errorf("device %q: stored endpoints: %w", d.ID, err)
	}
	d.Endpoints = nilIfEmpty(d.Endpoints)
	if d.Tags, err = decodeTags(tags); err != nil {
		return Device{}, fmt.Errorf("device %q: %w", d.ID, err)
	}
	if err := json.Unmarshal([]byte(cands), &d.Candidates); err != nil {
		return Device{}, fmt.Errorf("device %q: stored candidates: %w", d.ID, err)
	}
	d.Candidates = nilIfEmpty(d.Candidates)
	d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
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

func encodeCandidates(cs []Candidate) (string, error) {
	if len(cs) == 0 {
		return "[]", nil
	}
	b, err := json.Marshal(cs)
	return string(b), err
}

func checkCandidates(cs []Candidate) error {
	for _, c := range cs {
		if !c.Addr.IsValid() || c.Type == "" {
			return fmt.Errorf("invalid candidate %s (%q)", c.Addr, c.Type)
		}
	}
	return nil
}

func checkEndpoints(eps []netip.AddrPort) error {
	for _, ep := range eps {
		if !ep.IsValid() {
			return fmt.Errorf("invalid endpoint %q", ep.String())
		}
	}
	return nil
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// recordProof remembers a registration proof until expires, after pruning
// expired ones (an index range), and returns ErrReplayed for a proof that
// is still remembered. No proof: nothing to do.
func recordProof(ctx context.Context, tx *sql.Tx, proof []byte, expires, now time.Time) error {
	if len(proof) == 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM register_proofs WHERE expires_at <= ?`, now.UnixNano()); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO register_proofs (proof, expires_at) VALUES (?, ?) ON CONFLICT (proof) DO NOTHING`,
		proof, expires.UnixNano())
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(ErrReplayed, err)
	}
	return nil
}
