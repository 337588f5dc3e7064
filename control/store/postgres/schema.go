package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// migrations is the ordered schema history: migrations[i] takes the schema
// from version i to i+1 (the row of wiremesh_schema). Append only: never
// edit a migration that has shipped.
var migrations = []string{
	// 1: initial schema.
	`
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE zones (
	name             text PRIMARY KEY,
	ipv4_pool        cidr NOT NULL,
	ipv6_pool        cidr NOT NULL,
	allow_exit_nodes boolean NOT NULL DEFAULT false,
	min_prefix_bits4 integer NOT NULL DEFAULT 0, -- child-prefix limits (ipam.Policy); 0: the default
	min_prefix_bits6 integer NOT NULL DEFAULT 0,
	max_prefixes     integer NOT NULL DEFAULT 0,
	created_at       bigint NOT NULL,          -- unix ns
	compacted_rev    bigint NOT NULL DEFAULT 0, -- changes with rev <= this are gone
	change_count     bigint NOT NULL DEFAULT 0  -- rows in changes for this zone
);

CREATE TABLE join_tokens (
	id         text PRIMARY KEY,
	hash       bytea NOT NULL UNIQUE,
	zone       text NOT NULL REFERENCES zones(name),
	reusable   boolean NOT NULL,
	expires_at bigint, -- unix ns; NULL: never
	used_at    bigint, -- unix ns; NULL: unused
	created_at bigint NOT NULL,
	tags       text[] NOT NULL DEFAULT '{}' -- given to the devices registering with it
);
CREATE INDEX join_tokens_zone ON join_tokens(zone);

CREATE TABLE devices (
	id         text PRIMARY KEY,
	zone       text NOT NULL REFERENCES zones(name),
	public_key bytea NOT NULL,
	hostname   text NOT NULL,
	idx        bigint NOT NULL CHECK (idx > 0), -- host index in both tunnel pools
	ipv4       inet NOT NULL,
	ipv6       inet NOT NULL,
	endpoints  text NOT NULL, -- JSON array of "addr:port"
	tags       text[] NOT NULL DEFAULT '{}', -- the tags of the token it last registered with
	generation bigint NOT NULL DEFAULT 1,    -- registrations of its key (Device.Generation)
	created_at bigint NOT NULL,
	updated_at bigint NOT NULL,
	CONSTRAINT devices_zone_key UNIQUE (zone, public_key),
	CONSTRAINT devices_zone_idx UNIQUE (zone, idx), -- idx order is IPv4 order
	CONSTRAINT devices_zone_ipv4 UNIQUE (zone, ipv4),
	CONSTRAINT devices_zone_ipv6 UNIQUE (zone, ipv6)
);
CREATE INDEX devices_ipv4 ON devices(ipv4, zone);

CREATE TABLE device_tokens (
	hash       bytea PRIMARY KEY,
	device_id  text NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	created_at bigint NOT NULL
);
CREATE INDEX device_tokens_device ON device_tokens(device_id);

-- Child prefixes. No two devices of a zone hold overlapping ones; one
-- device's may overlap each other. Default routes (exit nodes) overlap
-- everything, so they are left out of the exclusion and are unique per
-- zone and family instead.
CREATE TABLE prefixes (
	zone      text NOT NULL REFERENCES zones(name),
	prefix    cidr NOT NULL,
	device_id text NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	PRIMARY KEY (zone, prefix),
	CONSTRAINT prefixes_no_overlap EXCLUDE USING gist
		(zone WITH =, prefix inet_ops WITH &&, device_id WITH <>)
		WHERE (masklen(prefix) > 0)
);
CREATE UNIQUE INDEX prefixes_one_default_route ON prefixes(zone, family(prefix)) WHERE masklen(prefix) = 0;
CREATE INDEX prefixes_device ON prefixes(device_id);

-- The revision counter: the rev of the last change ever appended. One row,
-- locked by every appending transaction until it commits, so revisions
-- become visible in order. It only grows.
CREATE TABLE revision (
	id  integer PRIMARY KEY CHECK (id = 1),
	rev bigint NOT NULL
);
INSERT INTO revision (id, rev) VALUES (1, 0);

CREATE TABLE changes (
	rev    bigint PRIMARY KEY,
	zone   text NOT NULL,
	kind   smallint NOT NULL,
	device text NOT NULL -- JSON, the device's state at this change
);
CREATE INDEX changes_zone_rev ON changes(zone, rev);

-- Access policies: one document per zone; a NULL document is a removed
-- policy whose revision is kept.
CREATE TABLE zone_policies (
	zone       text PRIMARY KEY REFERENCES zones(name),
	document   bytea,           -- NULL: no policy
	rev        bigint NOT NULL, -- revision of the change that set it
	updated_at bigint NOT NULL
);

-- Registration proofs seen, so a signed registration cannot be replayed on
-- any replica.
CREATE TABLE register_proofs (
	proof      bytea PRIMARY KEY,
	expires_at bigint NOT NULL
);
CREATE INDEX register_proofs_expires ON register_proofs(expires_at);

-- The service's own secrets, shared by its replicas.
CREATE TABLE service_secrets (
	name       text PRIMARY KEY,
	value      bytea NOT NULL,
	created_at bigint NOT NULL
);
`,
	// 2: device identity (as SQLite migration 6): ephemeral devices,
	// presence (the announced state and per-process leases),
	// case-insensitive hostnames, device token lifetimes, revoked keys.
	`
ALTER TABLE devices ADD COLUMN ephemeral boolean NOT NULL DEFAULT false;
ALTER TABLE devices ADD COLUMN online boolean NOT NULL DEFAULT false;
ALTER TABLE devices ADD COLUMN last_seen bigint; -- unix ns; NULL: never
ALTER TABLE devices ADD COLUMN hostname_fold text NOT NULL DEFAULT '';
UPDATE devices SET hostname_fold = lower(hostname);
CREATE INDEX devices_zone_hostname ON devices(zone, hostname_fold);
CREATE INDEX devices_ephemeral ON devices(online) WHERE ephemeral;

ALTER TABLE device_tokens ADD COLUMN expires_at bigint; -- unix ns; NULL: never

CREATE TABLE revoked_keys (
	public_key bytea PRIMARY KEY,
	zone       text NOT NULL,
	device_id  text NOT NULL,
	reason     text NOT NULL, -- "revoked" or "rotated"
	revoked_at bigint NOT NULL
);

-- Watch-stream leases: holder (a service process) holds a stream of the
-- device until "until" unless renewed.
CREATE TABLE device_streams (
	device_id text NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
	holder    text NOT NULL,
	until     bigint NOT NULL,
	PRIMARY KEY (device_id, holder)
);
CREATE INDEX device_streams_until ON device_streams(until);
`,
	// 3: typed reachability candidates and the NAT kind a device reports
	// (as SQLite migration 7).
	`
ALTER TABLE devices ADD COLUMN candidates text NOT NULL DEFAULT '[]';
ALTER TABLE devices ADD COLUMN nat text NOT NULL DEFAULT '';
`,
	// 4: each device's latest report of its peers (path, handshake,
	// bytes), outside the change log (as SQLite migration 8).
	`
CREATE TABLE device_stats (
	device_id   text PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
	reported_at bigint NOT NULL, -- unix ns
	peers       text NOT NULL    -- JSON array of {device_id, path, last_handshake, rx_bytes, tx_bytes}
);
`,
}

// migrationLock is the advisory lock key held while migrating, so replicas
// starting together migrate one after the other ("wiremesh" in ASCII).
const migrationLock = 0x77697265_6d657368

// migrate brings the schema to len(migrations) in one transaction, or
// fails, changing nothing, when the database's schema is newer.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin schema migration: %w", connectErr(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("schema migration lock: %w", err)
	}
	v, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this program supports (%d): upgrade wiremesh", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	if v == 0 {
		if _, err := tx.Exec(ctx, `CREATE TABLE wiremesh_schema (version integer NOT NULL);
			INSERT INTO wiremesh_schema (version) VALUES (0)`); err != nil {
			return fmt.Errorf("create schema version table: %w", err)
		}
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.Exec(ctx, migrations[i]); err != nil {
			return fmt.Errorf("schema migration %d: %w", i+1, explainMigration(err))
		}
		if _, err := tx.Exec(ctx, `UPDATE wiremesh_schema SET version = $1`, i+1); err != nil {
			return fmt.Errorf("schema migration %d: set version: %w", i+1, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit schema migration: %w", err)
	}
	s.log.Info("store schema migrated", "from", v, "to", len(migrations))
	return nil
}

// schemaVersion reads the schema version: 0 for a database without our
// tables.
func schemaVersion(ctx context.Context, tx pgx.Tx) (int, error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('wiremesh_schema') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v int
	err := tx.QueryRow(ctx, `SELECT version FROM wiremesh_schema`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errors.New("read schema version: the table wiremesh_schema is empty")
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// explainMigration adds what an operator can do about the usual failures.
func explainMigration(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == codeUndefinedFile || pe.Code == "0A000":
			return fmt.Errorf("%w (the btree_gist extension must be available: it ships with PostgreSQL's contrib modules)", err)
		case pe.Code == "42501": // insufficient privilege
			return fmt.Errorf("%w (the role needs CREATE on the database and its schema; btree_gist is a trusted extension)", err)
		}
	}
	return err
}
