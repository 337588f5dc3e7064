package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wiremesh/wiremesh/control/store"
)

// Reconnection and liveness of the LISTEN connection.
const (
	listenRetryMin = 100 * time.Millisecond
	listenRetryMax = 2 * time.Second
	// listenPing is how long the connection may stay silent before it is
	// pinged, so that a connection lost without a reset is noticed.
	listenPing = 30 * time.Second
)

// ListenChanges implements store.ChangeListener: it LISTENs on [Channel]
// on a connection of its own (outside the pool) and calls fn with the
// zone of each notification. It calls fn("") each time the connection is
// (re)established, since changes may have been committed while it was
// down, and reconnects with backoff until ctx is done or the store closes.
func (s *Store) ListenChanges(ctx context.Context, fn func(zone string)) error {
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return fmt.Errorf("postgres: listen: %w", store.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	backoff := listenRetryMin
	for {
		err := s.listenOnce(ctx, fn)
		if ctx.Err() != nil {
			if s.closed.Load() {
				return fmt.Errorf("postgres: listen: %w", store.ErrClosed)
			}
			return ctx.Err()
		}
		if errors.Is(err, errListening) {
			backoff = listenRetryMin // it worked for a while
		}
		s.log.Warn("store: change notifications lost; reconnecting", "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			continue // reported above on the next turn
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, listenRetryMax)
	}
}

// errListening marks an error that ended a connection that had been
// listening (as opposed to one that never connected).
var errListening = errors.New("listen connection lost")

// listenOnce connects, LISTENs and delivers notifications until the
// connection fails or ctx is done.
func (s *Store) listenOnce(ctx context.Context, fn func(zone string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{Channel}.Sanitize()); err != nil {
		return err
	}
	s.log.Debug("store: listening for changes", "channel", Channel)
	fn("") // whatever happened while nobody listened
	for {
		wctx, cancel := context.WithTimeout(ctx, listenPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			fn(n.Payload)
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case wctx.Err() != nil && !conn.IsClosed():
			// Silent for a while: make sure the server is still there.
			pctx, cancel := context.WithTimeout(ctx, listenPing)
			err = conn.Ping(pctx)
			cancel()
			if err == nil {
				continue
			}
		}
		return fmt.Errorf("%w: %w", errListening, err)
	}
}
