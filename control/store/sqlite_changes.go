package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// deviceJSON is the stored form of a Device in the change log. It has its
// own JSON names so that renaming a Go field never breaks stored history.
type deviceJSON struct {
	ID        string           `json:"id"`
	Zone      string           `json:"zone"`
	PublicKey Key              `json:"public_key"`
	Hostname  string           `json:"hostname"`
	IPv4      netip.Addr       `json:"ipv4"`
	IPv6      netip.Addr       `json:"ipv6"`
	Prefixes  []netip.Prefix   `json:"prefixes,omitempty"`
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	Tags      []string         `json:"tags,omitempty"`
	CreatedAt time.Time        `json:"created_at"`
	UpdatedAt time.Time        `json:"updated_at"`
	Ephemeral bool             `json:"ephemeral,omitempty"`
	Online    bool             `json:"online,omitempty"`
	LastSeen  time.Time        `json:"last_seen,omitzero"`
	// Generation is absent in changes recorded before it existed.
	Generation uint64 `json:"generation,omitempty"`
	// Candidates and NAT came with schema 7; older entries have neither.
	Candidates []Candidate `json:"candidates,omitempty"`
	NAT        string      `json:"nat,omitempty"`
}

func encodeDevice(d Device) (string, error) {
	b, err := json.Marshal(deviceJSON{
		ID: d.ID, Zone: d.Zone, PublicKey: d.PublicKey, Hostname: d.Hostname,
		IPv4: d.IPv4, IPv6: d.IPv6, Prefixes: d.Prefixes, Endpoints: d.Endpoints, Tags: d.Tags,
		Candidates: d.Candidates, NAT: d.NAT,
		CreatedAt: d.CreatedAt.UTC(), UpdatedAt: d.UpdatedAt.UTC(), Generation: d.Generation,
		Ephemeral: d.Ephemeral, Online: d.Online, LastSeen: d.LastSeen.UTC(),
	})
	return string(b), err
}

func decodeDevice(s string) (Device, error) {
	var j deviceJSON
	if err := json.Unmarshal([]byte(s), &j); err != nil {
		return Device{}, err
	}
	return Device{
		ID: j.ID, Zone: j.Zone, PublicKey: j.PublicKey, Hostname: j.Hostname,
		IPv4: j.IPv4, IPv6: j.IPv6, Prefixes: nilIfEmpty(j.Prefixes), Endpoints: nilIfEmpty(j.Endpoints),
		Tags:       nilIfEmpty(j.Tags),
		Candidates: nilIfEmpty(j.Candidates), NAT: j.NAT,
		CreatedAt: j.CreatedAt.UTC(), UpdatedAt: j.UpdatedAt.UTC(), Generation: j.Generation,
		Ephemeral: j.Ephemeral, Online: j.Online, LastSeen: utcOrZero(j.LastSeen),
	}, nil
}

// appendChange records a change of d in d's zone and returns its revision.
// It then compacts the zone's log down to the retention limit; with the
// per-zone row count kept in zones.change_count this costs one index probe
// and, in steady state, one row deletion per append.
func (s *SQLite) appendChange(ctx context.Context, tx *sql.Tx, kind ChangeKind, d Device) (int64, error) {
	js := "{}" // a policy change has no device
	if kind != ChangePolicy {
		var err error
		if js, err = encodeDevice(d); err != nil {
			return 0, fmt.Errorf("encode change: %w", err)
		}
	}
	var rev int64
	if err := tx.QueryRowContext(ctx,
		`UPDATE revision SET rev = rev + 1 WHERE id = 1 RETURNING rev`).Scan(&rev); err != nil {
		return 0, fmt.Errorf("next revision: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO changes (rev, zone, kind, device) VALUES (?, ?, ?, ?)`,
		rev, d.Zone, int(kind), js); err != nil {
		return 0, fmt.Errorf("append change: %w", err)
	}
	var count int64
	if err := tx.QueryRowContext(ctx,
		`UPDATE zones SET change_count = change_count + 1 WHERE name = ? RETURNING change_count`,
		d.Zone).Scan(&count); err != nil {
		return 0, fmt.Errorf("count changes: %w", err)
	}
	if excess := count - int64(s.retention); excess > 0 {
		if err := compact(ctx, tx, d.Zone, excess); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// compactQuery finds the newest revision to compact: the (?2+1)-th oldest
// change of zone ?1, walking the (zone, rev) index.
const compactQuery = `SELECT rev FROM changes WHERE zone = ?1 ORDER BY rev LIMIT 1 OFFSET ?2`

// compact deletes the zone's oldest excess changes and moves its
// compaction point to the newest deleted revision.
func compact(ctx context.Context, tx *sql.Tx, zone string, excess int64) error {
	var cut int64
	if err := tx.QueryRowContext(ctx, compactQuery, zone, excess-1).Scan(&cut); err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE zone = ? AND rev <= ?`, zone, cut)
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	_, err = tx.ExecContext(ctx,
		`UPDATE zones SET compacted_rev = ?, change_count = change_count - ? WHERE name = ?`, cut, n, zone)
	if err != nil {
		return fmt.Errorf("compact zone %q: %w", zone, err)
	}
	return nil
}

// Snapshot implements Store.Snapshot: the zone's devices and the store's
// revision, read in one transaction.
func (s *SQLite) Snapshot(ctx context.Context, zone string) (int64, []Device, error) {
	var (
		rev int64
		ds  []Device
	)
	err := s.read(ctx, fmt.Sprintf("snapshot of zone %q", zone), func(tx *sql.Tx) error {
		if _, err := loadZone(ctx, tx, zone); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT rev FROM revision WHERE id = 1`).Scan(&rev); err != nil {
			return err
		}
		var err error
		ds, err = loadDevices(ctx, tx, zone)
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return rev, ds, nil
}

// Changes implements Store.Changes. ErrCompacted also when since is ahead
// of the store's revision (a revision this store never issued, e.g. from a
// database that was replaced): the caller needs a fresh snapshot either way.
// A negative since is treated as 0.
func (s *SQLite) Changes(ctx context.Context, zone string, since int64) ([]Change, int64, error) {
	since = max(since, 0)
	var (
		cur int64
		cs  []Change
	)
	err := s.read(ctx, fmt.Sprintf("changes of zone %q since %d", zone, since), func(tx *sql.Tx) error {
		var compacted int64
		err := tx.QueryRowContext(ctx, `SELECT compacted_rev FROM zones WHERE name = ?`, zone).Scan(&compacted)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("zone %q: %w", zone, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT rev FROM revision WHERE id = 1`).Scan(&cur); err != nil {
			return err
		}
		if since < compacted {
			return fmt.Errorf("%w: zone %q kept changes after revision %d", ErrCompacted, zone, compacted)
		}
		if since > cur {
			return fmt.Errorf("%w: revision %d is ahead of the store (%d)", ErrCompacted, since, cur)
		}
		rows, err := tx.QueryContext(ctx,
			`SELECT rev, kind, device FROM changes WHERE zone = ? AND rev > ? ORDER BY rev`, zone, since)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				c    = Change{Zone: zone}
				kind int
				js   string
			)
			if err := rows.Scan(&c.Rev, &kind, &js); err != nil {
				return err
			}
			c.Kind = ChangeKind(kind)
			if c.Kind == ChangePolicy {
				cs = append(cs, c) // no device
				continue
			}
			if c.Device, err = decodeDevice(js); err != nil {
				return fmt.Errorf("change %d: %w", c.Rev, err)
			}
			cs = append(cs, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, err
	}
	return cs, cur, nil
}

// utcOrZero returns t in UTC, keeping the zero time zero.
func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}
