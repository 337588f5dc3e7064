package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// DefaultChangeRetention is how many change-log entries SQLite keeps per
// zone unless WithChangeRetention says otherwise.
const DefaultChangeRetention = 10000

// busyTimeout is how long a connection waits for a lock held by another
// process before SQLITE_BUSY. Inside this process writes are serialized by
// the single write connection, so this only matters for other processes.
const busyTimeout = 5 * time.Second

// maxReaders bounds the read connection pool.
const maxReaders = 4

// SQLite is the embedded Store: one SQLite file in WAL mode.
//
// Writes go through a single connection that begins every transaction with
// BEGIN IMMEDIATE, so they are serialized (SQLite has one writer anyway) and
// a transaction never fails halfway with SQLITE_BUSY on lock upgrade. Reads
// use a separate pool and run concurrently with each other and with the
// writer (WAL snapshots).
//
// Child prefixes are checked with ipam.CheckPrefixes under the zone's
// policy (form, width, pools, the device's own prefixes, count), then
// against other devices' prefixes with index lookups only (see
// prefixes.go), inside the transaction that adds them. In a zone with
// AllowExitNodes a default route (/0) is exempt from overlap checks except
// against another device's /0 of the same family.
//
// Durability: synchronous=FULL. Every commit of an allocation is fsynced
// before the service answers, because a tunnel address or child prefix, once
// promised to a member, must not be handed to another member after a power
// loss. Registrations are rare enough that the extra fsync is cheap.
type SQLite struct {
	path      string
	w         *sql.DB // one connection, BEGIN IMMEDIATE
	r         *sql.DB // read-only pool
	log       *slog.Logger
	now       func() time.Time
	retention int
	closed    atomic.Bool
}

var _ Store = (*SQLite)(nil)

// SQLiteOption configures OpenSQLite.
type SQLiteOption func(*sqliteConfig)

type sqliteConfig struct {
	log       *slog.Logger
	now       func() time.Time
	retention int
}

// WithLogger sets the logger; nil (the default) is quiet.
func WithLogger(l *slog.Logger) SQLiteOption {
	return func(c *sqliteConfig) { c.log = l }
}

// WithChangeRetention sets how many change-log entries are kept per zone;
// older ones are compacted (deleted) and a watcher that asks for them gets
// ErrCompacted. n must be at least 1; the default is DefaultChangeRetention.
func WithChangeRetention(n int) SQLiteOption {
	return func(c *sqliteConfig) { c.retention = n }
}

// WithClock sets the clock used when a caller passes a zero time (Now,
// CreatedAt). The default is time.Now.
func WithClock(now func() time.Time) SQLiteOption {
	return func(c *sqliteConfig) { c.now = now }
}

// OpenSQLite opens (creating if needed) the SQLite database at path, applies
// pending schema migrations and creates the zone "default" if absent. It
// fails, without modifying the file, when path is not an SQLite database or
// was written by a newer version with a schema this code does not know.
func OpenSQLite(ctx context.Context, path string, opts ...SQLiteOption) (*SQLite, error) {
	cfg := sqliteConfig{now: time.Now, retention: DefaultChangeRetention}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.retention < 1 {
		return nil, fmt.Errorf("store: open %q: change retention %d: must be at least 1", path, cfg.retention)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.log == nil {
		cfg.log = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, fmt.Errorf("store: open: empty database path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}
	if err := checkHeader(abs); err != nil {
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}

	s := &SQLite{path: abs, log: cfg.log, now: cfg.now, retention: cfg.retention}
	s.w, err = sql.Open("sqlite", dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetMaxIdleConns(1)
	s.w.SetConnMaxLifetime(0)
	s.w.SetConnMaxIdleTime(0)

	if err := s.migrate(ctx); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}

	s.r, err = sql.Open("sqlite", dsn(abs, true))
	if err != nil {
		s.w.Close()
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}
	s.r.SetMaxOpenConns(maxReaders)
	s.r.SetMaxIdleConns(maxReaders)

	if err := s.ensureDefaultZone(ctx); err != nil {
		s.w.Close()
		s.r.Close()
		return nil, fmt.Errorf("store: open %q: %w", path, err)
	}
	s.log.Debug("store opened", "path", abs, "retention", s.retention)
	return s, nil
}

// dsn builds the modernc.org/sqlite data source name. The path is a URI so
// that '?', '#' and '%' in file names survive; the underscore parameters
// are interpreted by the driver on every new connection.
func dsn(abs string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Set("_txlock", "immediate")
	}
	u := url.URL{Scheme: "file", Path: abs}
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

// Path returns the absolute path of the database file.
func (s *SQLite) Path() string { return s.path }

// Close closes both connection pools. Later calls, including a second
// Close, return ErrClosed.
func (s *SQLite) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("store: close: %w", ErrClosed)
	}
	err := errors.Join(s.r.Close(), s.w.Close())
	if err != nil {
		return fmt.Errorf("store: close %q: %w", s.path, err)
	}
	s.log.Debug("store closed", "path", s.path)
	return nil
}

// wrap prefixes err with the operation and maps errors caused by a closed
// store or a done context to ErrClosed and the context's error.
func (s *SQLite) wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case s.closed.Load() && !errors.Is(err, ErrClosed):
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("store: %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// write runs fn in a write transaction (BEGIN IMMEDIATE on the single write
// connection) and commits it when fn returns nil. Any error rolls back.
func (s *SQLite) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	if s.closed.Load() {
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return s.wrap(ctx, op, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if err := fn(tx); err != nil {
		return s.wrap(ctx, op, err)
	}
	return s.wrap(ctx, op, tx.Commit())
}

// read runs fn in a read-only transaction on the read pool: every query in
// fn sees the same snapshot of the database.
func (s *SQLite) read(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	if s.closed.Load() {
		return fmt.Errorf("store: %s: %w", op, ErrClosed)
	}
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return s.wrap(ctx, op, err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	if err := fn(tx); err != nil {
		return s.wrap(ctx, op, err)
	}
	return s.wrap(ctx, op, tx.Commit())
}

// clock returns t, or the store's current time when t is zero.
func (s *SQLite) clock(t time.Time) time.Time {
	if t.IsZero() {
		return s.now()
	}
	return t
}

// nanos stores a time as Unix nanoseconds; the zero time is NULL.
func nanos(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

// fromNanos is the inverse of nanos.
func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}
