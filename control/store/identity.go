package store

import (
	"context"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// IdentityStore is the part of Store about a device's life: revocation,
// key and token rotation, presence and the removal of ephemeral devices.
type IdentityStore interface {
	// RevokeDevice deletes a device as DeleteDevice does and, in the same
	// transaction, refuses its public key from then on: Register and
	// RotateKey with it give ErrRevoked, whatever the join token.
	// ErrNotFound if unknown.
	RevokeDevice(ctx context.Context, id string, now time.Time) error
	// RevokedKey reports whether key was revoked or retired.
	RevokedKey(ctx context.Context, key Key) (bool, error)

	// RotateKey replaces a device's public key, keeping its id, addresses,
	// prefixes and tokens, retires the old key as RevokeDevice does (it
	// can never register again), and records an upsert change. ErrExists
	// if newKey belongs to another device of the zone, ErrRevoked if it was
	// revoked, ErrNotFound if the device is unknown.
	RotateKey(ctx context.Context, id string, newKey Key, now time.Time) (Device, error)

	// RotateDeviceToken adds the device token hashing to newHash (expiring
	// at expires; zero: never) and deletes every other token of the
	// device, in one transaction. ErrNotFound if the device is unknown.
	RotateDeviceToken(ctx context.Context, id string, newHash [32]byte, expires, now time.Time) error

	// UpdatePresence records which devices hold a watch stream at one
	// service process (p.Holder), as a lease: see PresenceUpdate. In one
	// transaction it first drops every holder's leases that ended at or
	// before p.Now (a process that died), then applies p; every device
	// whose presence (some live lease) now differs from its stored Online
	// gets Online and LastSeen = p.Now stored and a ChangePresence
	// appended. Unknown device ids are ignored. It returns the zones that
	// got changes.
	UpdatePresence(ctx context.Context, p PresenceUpdate) (zones []string, err error)

	// DeleteEphemeral deletes the ephemeral devices that are offline (no
	// live lease at now) and were last seen (never seen: last registered
	// or updated) before cutoff, as DeleteDevice does, and returns them.
	DeleteEphemeral(ctx context.Context, cutoff, now time.Time) ([]Device, error)
}

// PresenceUpdate is one service process's report of watch streams.
type PresenceUpdate struct {
	// Holder identifies the service process (random per process start).
	Holder string
	// Online are devices with a watch stream at Holder now: their lease
	// is set to Until and their LastSeen to Now.
	Online []string
	// Offline are devices whose last watch stream at Holder ended: their
	// lease at Holder is dropped.
	Offline []string
	// Until is when the leases of Online end unless renewed.
	Until time.Time
	// Now is the clock (zero: the store's).
	Now time.Time
}

// FoldHostname is the form in which hostnames are compared: two
// hostnames are the same when their folds are equal.
func FoldHostname(h string) string { return strings.ToLower(h) }

// maxHostnameBytes is the longest hostname (as the service accepts).
const maxHostnameBytes = 63

// maxHostnameSuffix bounds the search for a free suffixed hostname.
const maxHostnameSuffix = 1000

// suffixedHostname returns h with "-n" appended, h cut (at a rune
// boundary) so the result fits maxHostnameBytes.
func suffixedHostname(h string, n int) string {
	suf := "-" + strconv.Itoa(n)
	for len(h)+len(suf) > maxHostnameBytes {
		_, size := utf8.DecodeLastRuneInString(h)
		h = h[:len(h)-size]
	}
	return h + suf
}
