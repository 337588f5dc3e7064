// Package postgres is the PostgreSQL implementation of store.Store, for a
// coordination service run as several replicas on one database.
//
// # What the database enforces
//
// Replicas do not coordinate with each other; the database keeps the
// invariants that must hold whatever they do concurrently:
//
//   - No two devices of a zone hold overlapping child prefixes: an
//     exclusion constraint over cidr with GiST (btree_gist for the zone and
//     device columns). Prefixes of one device may overlap each other; a
//     default route (/0, exit nodes) is excluded from it and unique per
//     zone and address family instead.
//   - Tunnel addresses are unique per zone (unique constraints). Two
//     registrations that pick the same lowest free address collide there;
//     the loser's transaction is retried and picks the next one.
//   - Revisions come from one counter row, taken by UPDATE … RETURNING at
//     the end of each transaction. Its row lock makes revisions commit in
//     order, so a watcher that has seen revision R never later finds a
//     change below R appear (a SEQUENCE would hand out numbers that commit
//     out of order, and a watcher resuming from the higher one would skip
//     the lower).
//   - Registration proofs and single-use join tokens are consumed in the
//     registering transaction (the token row is locked), so neither can
//     be used twice, across replicas too.
//
// Transactions run at READ COMMITTED and are retried (a bounded number of
// times) on serialization failures, deadlocks and unique or exclusion
// violations: the retry re-reads the state and either succeeds or returns
// the store's own error (ErrAddrInUse, *store.ConflictError, …).
//
// After each commit a NOTIFY on [Channel] tells every replica which zone
// changed (see [Store.ListenChanges]).
//
// A database that cannot be reached gives errors matching
// store.ErrUnavailable; the pool reconnects by itself.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wiremesh/wiremesh/control/store"
)

// Channel is the NOTIFY channel; the payload is the zone's name.
const Channel = "wiremesh_changes"

// DefaultChangeRetention is how many change-log entries are kept per zone
// unless WithChangeRetention says otherwise.
const DefaultChangeRetention = store.DefaultChangeRetention

// maxAttempts bounds the retries of one transaction.
const maxAttempts = 20

// Store is a store.Store on PostgreSQL. It is safe for concurrent use, also
// by several processes sharing the database.
type Store struct {
	pool      *pgxpool.Pool
	cfg       *pgx.ConnConfig // for the LISTEN connection
	log       *slog.Logger
	now       func() time.Time
	retention int

	mu     sync.Mutex // orders ListenChanges' wg.Add before Close's wg.Wait
	closed atomic.Bool
	done   chan struct{}  // closed by Close: ends ListenChanges
	wg     sync.WaitGroup // ListenChanges calls
}

var (
	_ store.Store          = (*Store)(nil)
	_ store.ChangeListener = (*Store)(nil)
	_ store.SecretStore    = (*Store)(nil)
)

// Option configures Open.
type Option func(*config)

type config struct {
	log       *slog.Logger
	now       func() time.Time
	retention int
	maxConns  int32
}

// WithLogger sets the logger; nil (the default) is quiet.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.log = l } }

// WithChangeRetention sets how many change-log entries are kept per zone
// (at least 1; default DefaultChangeRetention).
func WithChangeRetention(n int) Option { return func(c *config) { c.retention = n } }

// WithClock sets the clock used when a caller passes a zero time. The
// default is time.Now.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithMaxConns bounds the connection pool (default: pgx's, at least 4, or
// pool_max_conns in the DSN). The LISTEN connection is extra.
func WithMaxConns(n int32) Option { return func(c *config) { c.maxConns = n } }

// Open connects to the database named by dsn (a postgres:// URL or a
// key=value string, as libpq takes), applies pending schema migrations and
// creates the zone "default" if absent. It fails with a clear error when
// the database cannot be reached or refuses the credentials, and without
// changing anything when its schema is newer than this program knows.
func Open(ctx context.Context, dsn string, opts ...Option) (*Store, error) {
	c := config{now: time.Now, retention: DefaultChangeRetention}
	for _, o := range opts {
		o(&c)
	}
	if c.retention < 1 {
		return nil, fmt.Errorf("postgres: open: change retention %d: must be at least 1", c.retention)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors quote the DSN with its password masked.
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	if c.maxConns > 0 {
		pc.MaxConns = c.maxConns
	}
	where := describe(pc.ConnConfig)
	s := &Store{cfg: pc.ConnConfig.Copy(), log: c.log, now: c.now, retention: c.retention,
		done: make(chan struct{})}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, fmt.Errorf("postgres: open %s: %w", where, err)
	}
	// The pool connects lazily: connect now, so that a wrong password or an
	// unreachable server is an error at start, not at the first request.
	if err := s.pool.Ping(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("postgres: open %s: %w", where, connectErr(err))
	}
	if err := s.migrate(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("postgres: open %s: %w", where, err)
	}
	if err := s.ensureDefaultZone(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("postgres: open %s: %w", where, err)
	}
	s.log.Debug("store opened", "database", where, "retention", s.retention)
	return s, nil
}

// describe names the database for messages, without the password.
func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("database %q as %q on %s:%d", c.Database, c.User, c.Host, c.Port)
}

// Close closes the pool and ends ListenChanges. Later calls, including a
// second Close, return an error wrapping store.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed.CompareAndSwap(false, true) {
		s.mu.Unlock()
		return fmt.Errorf("postgres: close: %w", store.ErrClosed)
	}
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	s.pool.Close()
	s.log.Debug("store closed")
	return nil
}

// wrap prefixes err with the operation and maps errors of a closed store,
// a done context and an unreachable database to ErrClosed, the context's
// error and ErrUnavailable.
func (s *Store) wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case s.closed.Load() && !errors.Is(err, store.ErrClosed):
		return fmt.Errorf("postgres: %s: %w", op, store.ErrClosed)
	case ctx.Err() != nil && !errors.Is(err, ctx.Err()):
		return fmt.Errorf("postgres: %s: %w", op, ctx.Err())
	case unavailable(err):
		return fmt.Errorf("postgres: %s: %w: %w", op, store.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

// write runs fn in a read-write transaction and commits it when fn returns
// nil. fn may run several times (see retryable) and must set its results
// afresh each time.
func (s *Store) write(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return s.tx(ctx, op, pgx.TxOptions{}, fn)
}

// read runs fn in a read-only REPEATABLE READ transaction: every query in
// fn sees the same snapshot.
func (s *Store) read(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	return s.tx(ctx, op, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, fn)
}

func (s *Store) tx(ctx context.Context, op string, opts pgx.TxOptions, fn func(tx pgx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		if s.closed.Load() {
			return fmt.Errorf("postgres: %s: %w", op, store.ErrClosed)
		}
		err := pgx.BeginTxFunc(ctx, s.pool, opts, fn)
		if err == nil {
			return nil
		}
		// A pooled connection that turned out dead before anything was
		// sent (the server restarted) is worth one more try on another.
		again := retryable(err) || (attempt == 1 && pgconn.SafeToRetry(err))
		if attempt >= maxAttempts || !again || ctx.Err() != nil {
			return s.wrap(ctx, op, err)
		}
		s.log.Debug("store: retrying transaction", "op", op, "attempt", attempt, "err", err)
		// A short random pause desynchronizes transactions that collided.
		pause := time.Duration(rand.Int64N(int64(attempt) * int64(2*time.Millisecond)))
		select {
		case <-ctx.Done():
			return s.wrap(ctx, op, ctx.Err())
		case <-time.After(pause):
		}
	}
}

// clock returns t, or the store's current time when t is zero.
func (s *Store) clock(t time.Time) time.Time {
	if t.IsZero() {
		return s.now()
	}
	return t
}

// nanos stores a time as Unix nanoseconds (timestamptz would round to
// microseconds); the zero time is NULL.
func nanos(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	n := t.UnixNano()
	return &n
}

// fromNanos is the inverse of nanos.
func fromNanos(n *int64) time.Time {
	if n == nil {
		return time.Time{}
	}
	return time.Unix(0, *n).UTC()
}
