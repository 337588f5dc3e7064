package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// migrations is the ordered schema history. migrations[i] takes the schema
// from version i to i+1 (PRAGMA user_version). Append only: never edit a
// migration that has shipped.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE zones (
	name             TEXT PRIMARY KEY,
	ipv4_pool        TEXT NOT NULL,
	ipv6_pool        TEXT NOT NULL,
	allow_exit_nodes INTEGER NOT NULL DEFAULT 0,
	created_at       INTEGER NOT NULL,
	compacted_rev    INTEGER NOT NULL DEFAULT 0, -- changes with rev <= this are gone
	change_count     INTEGER NOT NULL DEFAULT 0  -- rows in changes for this zone
) STRICT;

CREATE TABLE join_tokens (
	id         TEXT PRIMARY KEY,
	hash       BLOB NOT NULL UNIQUE,
	zone       TEXT NOT NULL REFERENCES zones(name),
	reusable   INTEGER NOT NULL,
	expires_at INTEGER, -- unix ns; NULL: never
	used_at    INTEGER, -- unix ns; NULL: unused
	created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX join_tokens_zone ON join_tokens(zone);

CREATE TABLE devices (
	id         TEXT PRIMARY KEY,
	zone       TEXT NOT NULL REFERENCES zones(name),
	public_key BLOB NOT NULL,
	hostname   TEXT NOT NULL,
	idx        INTEGER NOT NULL, -- host index in both tunnel pools
	ipv4       BLOB NOT NULL,
	ipv6       BLOB NOT NULL,
	endpoints  TEXT NOT NULL,    -- JSON array of "addr:port"
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX devices_zone_key ON devices(zone, public_key);
CREATE UNIQUE INDEX devices_zone_idx ON devices(zone, idx); -- idx order is IPv4 order
CREATE INDEX devices_ipv4 ON devices(ipv4, zone);

CREATE TABLE device_tokens (
	hash       BLOB PRIMARY KEY,
	device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX device_tokens_device ON device_tokens(device_id);

-- Child prefixes. start is the network address, 4 bytes for family 4 and
-- 16 for family 6, big-endian, so that BLOB order is address order.
CREATE TABLE prefixes (
	zone      TEXT NOT NULL REFERENCES zones(name),
	family    INTEGER NOT NULL CHECK (family IN (4, 6)),
	start     BLOB NOT NULL,
	bits      INTEGER NOT NULL,
	device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	PRIMARY KEY (zone, family, start, bits)
) STRICT, WITHOUT ROWID;
CREATE INDEX prefixes_device ON prefixes(device_id);

-- The store's revision counter: the rev of the last change ever appended.
-- It only grows, so revisions are never reused after compaction.
CREATE TABLE revision (
	id  INTEGER PRIMARY KEY CHECK (id = 1),
	rev INTEGER NOT NULL
) STRICT;
INSERT INTO revision (id, rev) VALUES (1, 0);

CREATE TABLE changes (
	rev    INTEGER PRIMARY KEY,
	zone   TEXT NOT NULL,
	kind   INTEGER NOT NULL,
	device TEXT NOT NULL -- JSON, the device's state at this change
) STRICT;
CREATE INDEX changes_zone_rev ON changes(zone, rev);
`,
	// 2: registration proofs seen, so a signed registration cannot be
	// replayed after a restart or on another replica.
	`
CREATE TABLE register_proofs (
	proof      BLOB PRIMARY KEY,
	expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX register_proofs_expires ON register_proofs(expires_at);
`,
	// 3: per-zone child-prefix limits (ipam.Policy); 0 means the default.
	`
ALTER TABLE zones ADD COLUMN min_prefix_bits4 INTEGER NOT NULL DEFAULT 0;
ALTER TABLE zones ADD COLUMN min_prefix_bits6 INTEGER NOT NULL DEFAULT 0;
ALTER TABLE zones ADD COLUMN max_prefixes INTEGER NOT NULL DEFAULT 0;
`,
	// 4: access policies (one document per zone; a NULL document is a
	// removed policy whose revision is kept) and tags of tokens and devices.
	`
CREATE TABLE zone_policies (
	zone       TEXT PRIMARY KEY REFERENCES zones(name),
	document   BLOB,             -- NULL: no policy
	rev        INTEGER NOT NULL, -- revision of the change that set it
	updated_at INTEGER NOT NULL
) STRICT;
ALTER TABLE join_tokens ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'; -- JSON array
ALTER TABLE devices ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';     -- JSON array
`,
	// 5: registration generation (Device.Generation); rows from before
	// count as registered once.
	`
ALTER TABLE devices ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
`,
	// 6: device identity (issue 13): ephemeral devices, presence (the
	// announced state and per-process leases), case-insensitive hostnames,
	// device token lifetimes, revoked keys. Touches nothing of other
	// migrations but the tables of migration 1.
	`
ALTER TABLE devices ADD COLUMN ephemeral INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN online INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN last_seen INTEGER; -- unix ns; NULL: never
ALTER TABLE devices ADD COLUMN hostname_fold TEXT NOT NULL DEFAULT '';
UPDATE devices SET hostname_fold = lower(hostname);
CREATE INDEX devices_zone_hostname ON devices(zone, hostname_fold);
CREATE INDEX devices_ephemeral ON devices(online) WHERE ephemeral = 1;

ALTER TABLE device_tokens ADD COLUMN expires_at INTEGER; -- unix ns; NULL: never

CREATE TABLE revoked_keys (
	public_key BLOB PRIMARY KEY,
	zone       TEXT NOT NULL,
	device_id  TEXT NOT NULL,
	reason     TEXT NOT NULL, -- "revoked" or "rotated"
	revoked_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Watch-stream leases: holder (a service process) holds a stream of the
-- device until "until" unless renewed.
CREATE TABLE device_streams (
	device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	holder    TEXT NOT NULL,
	until     INTEGER NOT NULL,
	PRIMARY KEY (device_id, holder)
) STRICT, WITHOUT ROWID;
CREATE INDEX device_streams_until ON device_streams(until);
`,
	// 7: typed reachability candidates and the NAT kind a device reports.
	`
ALTER TABLE devices ADD COLUMN candidates TEXT NOT NULL DEFAULT '[]'; -- JSON array of {addr, type}
ALTER TABLE devices ADD COLUMN nat TEXT NOT NULL DEFAULT '';
`,
	// 8: each device's latest report of its peers (path, handshake,
	// bytes), outside the change log.
	`
CREATE TABLE device_stats (
	device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
	reported_at INTEGER NOT NULL, -- unix ns
	peers       TEXT NOT NULL     -- JSON array of {device_id, path, last_handshake, rx_bytes, tx_bytes}
) STRICT, WITHOUT ROWID;
`,
}

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// checkHeader refuses an existing, non-empty file that is not an SQLite
// database, before SQLite (or a journal_mode pragma) touches it.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("is a directory, not an SQLite database")
	}
	if st.Size() == 0 {
		return nil
	}
	head := make([]byte, len(sqliteHeader))
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, sqliteHeader) {
		return fmt.Errorf("not an SQLite database (bad file header); refusing to open it")
	}
	return nil
}

// migrate brings the schema to SchemaVersion in one write transaction, or
// fails when the file's schema is newer than this code.
func (s *SQLite) migrate(ctx context.Context) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin schema migration: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this program supports (%d): upgrade wiremesh", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("schema migration %d: %w", i+1, err)
		}
		// PRAGMA takes no bound parameters; i+1 is an int.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, i+1)); err != nil {
			return fmt.Errorf("schema migration %d: set version: %w", i+1, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit schema migration: %w", err)
	}
	s.log.Info("store schema migrated", "path", s.path, "from", v, "to", len(migrations))
	return nil
}
