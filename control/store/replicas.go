package store

import (
	"context"
	"errors"
)

// ErrUnavailable reports a database that cannot be reached right now
// (connection refused or lost, server restarting). Callers answer "try
// again later". A write that failed this way before it committed changed
// nothing; one that lost its connection while committing may or may not
// have been applied, and a retry must be safe (registering the same key
// again returns the same device).
var ErrUnavailable = errors.New("database unavailable")

// ChangeListener is implemented by stores that several service replicas
// share: it tells each replica at once about changes committed by any of
// them, so that watch streams need not wait for a poll.
type ChangeListener interface {
	// ListenChanges calls fn with a zone's name after a change to the zone
	// is committed, by this process or another, until ctx is done or the
	// store is closed; it then returns ctx's error or ErrClosed. Calls are
	// sequential. After the notification channel was lost and is back, fn
	// is called with "" (any zone may have changed meanwhile). A caller
	// must still poll now and then: notifications are best-effort.
	ListenChanges(ctx context.Context, fn func(zone string)) error
}

// SecretStore is implemented by stores that keep the service's own
// secrets (its static key, admin token, self-signed TLS certificate), so
// that every replica of a service uses the same ones.
type SecretStore interface {
	// Secret returns the value kept under name. When there is none it
	// stores create's result first. Concurrent callers, in this process or
	// another, all get the one value that was stored first.
	Secret(ctx context.Context, name string, create func() ([]byte, error)) ([]byte, error)
}
