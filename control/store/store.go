// Package store persists the coordination service's state behind one
// interface: zones, join tokens, devices with their tunnel addresses and
// child prefixes, and the per-zone change log that the watch stream is
// served from. The embedded default is SQLite (OpenSQLite); package
// postgres implements the same interface for a service run as several
// replicas on one database (and also ChangeListener and SecretStore).
package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// Sentinel errors. Implementations wrap them (errors.Is) and may add
// detail; *ConflictError is used for prefix overlaps.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrTokenInvalid  = errors.New("join token unknown, expired, used, or for another zone")
	ErrPoolExhausted = errors.New("tunnel address pool exhausted")
	ErrAddrInUse     = errors.New("requested tunnel address in use")
	ErrAddrOutside   = errors.New("requested tunnel address outside the zone's pool")
	ErrCompacted     = errors.New("revision compacted: take a fresh snapshot")
	ErrClosed        = errors.New("store closed")
	ErrReplayed      = errors.New("registration proof used already")
)

// ConflictError reports a child prefix that overlaps (equals, lies inside,
// or contains) a prefix held by another device of the zone, or the zone's
// tunnel pools. errors.Is(err, ErrPrefixConflict) holds.
type ConflictError struct {
	Prefix   netip.Prefix // the prefix that was asked for
	Existing netip.Prefix // the prefix it overlaps
	OwnerID  string       // device id of the holder; "" for a tunnel pool
	Owner    string       // hostname of the holder, or "tunnel pool"
}

// ErrPrefixConflict is matched by every *ConflictError.
var ErrPrefixConflict = errors.New("prefix conflict")

func (e *ConflictError) Error() string {
	return fmt.Sprintf("prefix %s overlaps %s held by %s", e.Prefix, e.Existing, e.Owner)
}

func (e *ConflictError) Is(target error) bool { return target == ErrPrefixConflict }

// Zone is a separate mesh with its own pools and prefix space.
type Zone struct {
	Name           string
	IPv4Pool       netip.Prefix // e.g. 100.64.0.0/16
	IPv6Pool       netip.Prefix // a ULA /64
	AllowExitNodes bool         // child prefix /0 allowed
	CreatedAt      time.Time
}

// Device is a registered member.
type Device struct {
	ID        string
	Zone      string
	PublicKey api.Key
	Hostname  string
	IPv4      netip.Addr
	IPv6      netip.Addr
	Prefixes  []netip.Prefix   // child prefixes, sorted
	Endpoints []netip.AddrPort // as last reported
	CreatedAt time.Time
	UpdatedAt time.Time
}

// JoinToken is a join token as stored: only the SHA-256 of its secret.
type JoinToken struct {
	ID        string
	Hash      [32]byte
	Zone      string
	Reusable  bool
	ExpiresAt time.Time // zero: never
	UsedAt    time.Time // zero: unused
	CreatedAt time.Time
}

// ChangeKind says what happened to a device.
type ChangeKind int

const (
	ChangeUpsert ChangeKind = iota + 1 // device added or changed; Device is its new state
	ChangeRemove                       // device deleted; Device is its last state
)

// Change is one entry of a zone's change log.
type Change struct {
	Rev    int64 // strictly increasing across the whole store
	Zone   string
	Kind   ChangeKind
	Device Device
}

// RegisterParams is one registration. Prefixes are already validated for
// form (ipam.ParseChildPrefix); the store checks overlaps.
type RegisterParams struct {
	Zone            string
	JoinTokenHash   [32]byte // consumed (single-use) or checked (reusable) in the same transaction
	DeviceTokenHash [32]byte // the new device token, added to the device's tokens
	PublicKey       api.Key
	Hostname        string
	Prefixes        []netip.Prefix // added to what the key already holds
	Endpoints       []netip.AddrPort
	RequestedIPv4   netip.Addr // honoured on first registration when free
	// Proof, when set, is the registration's proof of key possession. It
	// is recorded until ProofExpires in the same transaction; a proof seen
	// before gives ErrReplayed (durable: survives restarts and is shared by
	// replicas of one store).
	Proof        []byte
	ProofExpires time.Time
	Now          time.Time
}

// UpdateParams changes a device. Nil/empty fields are left alone.
type UpdateParams struct {
	Hostname    *string
	Endpoints   *[]netip.AddrPort
	AddPrefixes []netip.Prefix
	Now         time.Time
}

// Store is the service's persistence. All methods are safe for concurrent
// use. Every mutation that changes what members see appends exactly one
// Change (per device affected) in the same transaction as the mutation, so
// the change log and the state never disagree.
type Store interface {
	// CreateZone creates a zone. ErrExists if the name is taken. The zone
	// "default" is created by the implementation when it opens.
	CreateZone(ctx context.Context, z Zone) error
	// Zone returns one zone or ErrNotFound.
	Zone(ctx context.Context, name string) (Zone, error)
	// Zones lists all zones by name.
	Zones(ctx context.Context) ([]Zone, error)

	// CreateJoinToken stores a token. ErrNotFound if the zone does not exist.
	CreateJoinToken(ctx context.Context, t JoinToken) error
	// JoinTokens lists the tokens of a zone ("" = all zones).
	JoinTokens(ctx context.Context, zone string) ([]JoinToken, error)
	// JoinTokenByHash returns the token whose secret hashes to h, or
	// ErrNotFound. It does not check expiry or use.
	JoinTokenByHash(ctx context.Context, h [32]byte) (JoinToken, error)
	// DeleteJoinToken deletes a token by id or returns ErrNotFound.
	DeleteJoinToken(ctx context.Context, id string) error

	// Register checks the join token (ErrTokenInvalid: unknown, expired,
	// used single-use token, or a token of another zone), then creates the
	// device or, if p.PublicKey is registered in the zone already, keeps its
	// id, addresses and prefixes, adds p.Prefixes, and replaces hostname and
	// endpoints. Tunnel addresses are allocated lowest-free from the zone's
	// pools (ErrPoolExhausted), honouring p.RequestedIPv4 when free
	// (ErrAddrInUse, ErrAddrOutside). Prefix overlaps give *ConflictError.
	// Token use, allocation, and the change entry happen in one transaction:
	// on any error nothing is changed. created reports a first registration.
	Register(ctx context.Context, p RegisterParams) (d Device, created bool, err error)

	// DeviceByToken returns the device a device-token hash belongs to, or
	// ErrNotFound.
	DeviceByToken(ctx context.Context, tokenHash [32]byte) (Device, error)
	// Device returns a device by id, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// Devices lists a zone's devices ("" = all zones), ordered by IPv4.
	Devices(ctx context.Context, zone string) ([]Device, error)
	// UpdateDevice applies p (prefix overlaps give *ConflictError and change
	// nothing) and records a change.
	UpdateDevice(ctx context.Context, id string, p UpdateParams) (Device, error)
	// DeleteDevice removes a device, its tokens and prefixes (which become
	// free) and records a remove change. ErrNotFound if unknown.
	DeleteDevice(ctx context.Context, id string) error
	// ReleasePrefix frees a child prefix held in a zone. If deviceID is not
	// empty the prefix must be held by that device (ErrNotFound otherwise).
	// Records an upsert change of the holder.
	ReleasePrefix(ctx context.Context, zone string, prefix netip.Prefix, deviceID string) error
	// Prefixes lists a zone's child prefixes ("" = all zones) in address order.
	Prefixes(ctx context.Context, zone string) ([]PrefixEntry, error)

	// Snapshot returns the zone's devices and the revision they reflect,
	// read consistently.
	Snapshot(ctx context.Context, zone string) (rev int64, devices []Device, err error)
	// Changes returns the zone's changes with Rev > since, in order, and the
	// store's current revision. ErrCompacted if changes after since were
	// discarded.
	Changes(ctx context.Context, zone string, since int64) ([]Change, int64, error)

	// Close releases the store. Later calls return ErrClosed.
	Close() error
}

// PrefixEntry is one allocated child prefix.
type PrefixEntry struct {
	Zone     string
	Prefix   netip.Prefix
	DeviceID string
	Hostname string
}
