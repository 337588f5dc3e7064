// Package store persists the coordination service's state behind one
// interface: zones, join tokens, devices with their tunnel addresses and
// child prefixes, and the per-zone change log that the watch stream is
// served from. The embedded default is SQLite (OpenSQLite); package
// postgres implements the same interface for a service run as several
// replicas on one database (and also ChangeListener and SecretStore).
package store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/ipam"
)

// DefaultZone is the zone every store creates when it opens (the same name
// as api.DefaultZone on the wire).
const DefaultZone = "default"

// Key is a device's WireGuard (X25519) public key. Its text form is
// standard base64 with padding, as on the wire.
type Key [32]byte

func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeroes (unset).
func (k Key) IsZero() bool { return k == Key{} }

// MarshalText encodes k as base64.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText decodes exactly 32 bytes of base64.
func (k *Key) UnmarshalText(b []byte) error {
	d, err := base64.StdEncoding.Strict().DecodeString(string(b))
	if err != nil {
		return fmt.Errorf("key %q: not base64: %w", b, err)
	}
	if len(d) != len(k) {
		return fmt.Errorf("key %q: %d bytes, want %d", b, len(d), len(k))
	}
	copy(k[:], d)
	return nil
}

// Sentinel errors. Implementations wrap them (errors.Is) and may add
// detail; *ConflictError is used for prefix overlaps, and the errors of
// ipam.CheckPrefixes pass through unchanged.
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
	// ErrRevoked: the public key was revoked (RevokeDevice) or retired by
	// a key rotation (RotateKey); it can never register again.
	ErrRevoked = errors.New("public key revoked")
	// ErrHostnameTaken: no free suffixed form of a hostname (see
	// Register).
	ErrHostnameTaken = errors.New("hostname taken in the zone")
)

// ConflictError reports a child prefix that overlaps (equals, lies inside,
// or contains) a prefix held by another device of the zone (OwnerID and
// Owner, its hostname, set), the zone's tunnel pools or the same device
// (see ipam.ConflictError). errors.Is(err, ErrPrefixConflict) holds.
type ConflictError = ipam.ConflictError

// ErrPrefixConflict is matched by every *ConflictError.
var ErrPrefixConflict = ipam.ErrPrefixConflict

// Zone is a separate mesh with its own pools and prefix space.
type Zone struct {
	Name           string
	IPv4Pool       netip.Prefix // e.g. 100.64.0.0/16
	IPv6Pool       netip.Prefix // a ULA /64
	AllowExitNodes bool         // child prefix /0 allowed
	// MinPrefixBits4 and MinPrefixBits6 are the shortest child prefixes
	// (other than /0) the zone accepts; MaxPrefixes is the most one device
	// may hold. Zero means the ipam default (ipam.Policy). Stored as given,
	// so a zero follows the defaults of later versions.
	MinPrefixBits4, MinPrefixBits6 int
	MaxPrefixes                    int
	CreatedAt                      time.Time
}

// Policy returns the zone's child-prefix rules for ipam.CheckPrefixes.
func (z Zone) Policy() ipam.Policy {
	return ipam.Policy{
		AllowDefaultRoute: z.AllowExitNodes,
		MinBits4:          z.MinPrefixBits4,
		MinBits6:          z.MinPrefixBits6,
		MaxPrefixes:       z.MaxPrefixes,
		Pools:             []netip.Prefix{z.IPv4Pool, z.IPv6Pool},
	}
}

// Device is a registered member.
type Device struct {
	ID        string
	Zone      string
	PublicKey Key
	Hostname  string
	IPv4      netip.Addr
	IPv6      netip.Addr
	Prefixes  []netip.Prefix   // child prefixes, sorted
	Endpoints []netip.AddrPort // as last reported
	// Tags are the Tags of the join token the device last registered with
	// (nil: none), for the zone's access policy.
	Tags      []string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Ephemeral devices are deleted by the service once they have been
	// offline for a while (DeleteEphemeral).
	Ephemeral bool
	// Online reports whether a service process holds a watch stream of
	// the device (see UpdatePresence); LastSeen is when it last did (zero:
	// never), renewed while it does.
	Online   bool
	LastSeen time.Time
	// TokenExpires is set by DeviceByToken only: when the device token
	// used expires (zero: never). DeviceByToken does not check it.
	TokenExpires time.Time
	// Generation counts the device's registrations: 1 when created, one
	// more each time its key registers again (a restart). Other updates
	// leave it alone.
	Generation uint64
	// Candidates and NAT are the typed reachability the device last
	// reported (PATCH self); a registration clears them.
	Candidates []Candidate
	NAT        string
}

// Candidate is an address a device reported it may be reached at, and
// how it learned it (api.CandidateType on the wire; the store keeps any
// non-empty type the service accepted).
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Type string         `json:"type"`
}

// JoinToken is a join token as stored: only the SHA-256 of its secret.
type JoinToken struct {
	ID        string
	Hash      [32]byte
	Zone      string
	Reusable  bool
	Tags      []string  // given to every device registering with the token (nil: none)
	ExpiresAt time.Time // zero: never
	UsedAt    time.Time // zero: unused
	CreatedAt time.Time
}

// ChangeKind says what happened to a device.
type ChangeKind int

const (
	ChangeUpsert ChangeKind = iota + 1 // device added or changed; Device is its new state
	ChangeRemove                       // device deleted; Device is its last state
	// ChangePolicy: the zone's access policy was set or removed; Device is
	// zero. Read the policy in force with Store.Policy.
	ChangePolicy
	// ChangePresence: the device went online or offline (Device.Online,
	// Device.LastSeen); nothing else changed.
	ChangePresence
)

// ZonePolicy is a zone's access policy document as stored. The store does
// not parse it (package control/policy does, before SetPolicy).
type ZonePolicy struct {
	Zone string
	// Document is the policy text byte for byte as set; nil when the zone
	// has no policy (everything allowed).
	Document []byte
	// Rev is the revision of the ChangePolicy entry that set (or removed)
	// it; 0 if the zone never had a policy.
	Rev       int64
	UpdatedAt time.Time // zero if the zone never had a policy
}

// Change is one entry of a zone's change log.
type Change struct {
	Rev    int64 // strictly increasing across the whole store
	Zone   string
	Kind   ChangeKind
	Device Device
}

// RegisterParams is one registration. The store checks Prefixes with
// ipam.CheckPrefixes against what the key holds already, then against other
// devices' prefixes, inside the registration's transaction.
type RegisterParams struct {
	Zone            string
	JoinTokenHash   [32]byte // consumed (single-use) or checked (reusable) in the same transaction
	DeviceTokenHash [32]byte // the new device token, added to the device's tokens
	// DeviceTokenExpires is when the new device token expires (zero:
	// never). Expired tokens of the device are deleted.
	DeviceTokenExpires time.Time
	PublicKey          Key
	// Hostname is the name asked for. Hostnames are unique within a zone,
	// compared case-insensitively: when another device holds it, the
	// device gets the first free of Hostname-2, Hostname-3, ... (cut to
	// fit 63 bytes); ErrHostnameTaken when none is free.
	Hostname string
	// Ephemeral is stored as given (a re-registration replaces it).
	Ephemeral     bool
	Prefixes      []netip.Prefix // added to what the key already holds
	Endpoints     []netip.AddrPort
	RequestedIPv4 netip.Addr // honoured on first registration when free
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
	Candidates  *[]Candidate
	NAT         *string
	AddPrefixes []netip.Prefix
	Now         time.Time
}

// Store is the service's persistence. All methods are safe for concurrent
// use. Every mutation that changes what members see appends exactly one
// Change (per device affected) in the same transaction as the mutation, so
// the change log and the state never disagree.
type Store interface {
	// CreateZone creates a zone. ErrExists if the name is taken. Its
	// limits must pass z.Policy().Validate(). The zone DefaultZone is
	// created by the implementation when it opens.
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
	// used single-use token, or a token of another zone) and that the key
	// is not revoked (ErrRevoked), then creates the
	// device or, if p.PublicKey is registered in the zone already, keeps its
	// id, addresses and prefixes, adds p.Prefixes, replaces hostname and
	// endpoints, and increments Generation. Tunnel addresses are allocated lowest-free from the zone's
	// pools (ErrPoolExhausted), honouring p.RequestedIPv4 when free
	// (ErrAddrInUse, ErrAddrOutside). p.Prefixes are checked with
	// ipam.CheckPrefixes(zone.Policy(), held, p.Prefixes), whose errors are
	// returned unchanged; an overlap with another device's prefix gives
	// *ConflictError.
	// The device's Tags become the join token's Tags (replacing what a
	// re-registered device carried).
	// Token use, allocation, and the change entry happen in one transaction:
	// on any error nothing is changed. created reports a first registration.
	Register(ctx context.Context, p RegisterParams) (d Device, created bool, err error)

	// RecordProof remembers a registration proof until expires, in a
	// transaction of its own, and gives ErrReplayed for a proof remembered
	// already (by either RecordProof or Register). The service calls it
	// before it checks the join token, so a proof is spent whatever becomes
	// of its registration; it then registers without RegisterParams.Proof.
	// Expired proofs are forgotten (now is the clock; zero means the
	// store's).
	RecordProof(ctx context.Context, proof []byte, expires, now time.Time) error

	// DeviceByToken returns the device a device-token hash belongs to, or
	// ErrNotFound.
	DeviceByToken(ctx context.Context, tokenHash [32]byte) (Device, error)
	// Device returns a device by id, or ErrNotFound.
	Device(ctx context.Context, id string) (Device, error)
	// Devices lists a zone's devices ("" = all zones), ordered by IPv4.
	Devices(ctx context.Context, zone string) ([]Device, error)
	// UpdateDevice applies p and records a change. p.AddPrefixes are checked
	// as in Register, and p.Hostname made unique as in Register; on any
	// error nothing changes.
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

	// Policy returns the zone's access policy: Document nil (and no error)
	// when it has none. ErrNotFound if the zone does not exist.
	Policy(ctx context.Context, zone string) (ZonePolicy, error)
	// SetPolicy replaces the zone's policy document with doc (nil or empty:
	// remove it) and appends one Change{Kind: ChangePolicy, Zone: zone} in
	// the same transaction, also when doc equals the policy in force. It
	// returns the stored policy, Rev being that change's revision and
	// UpdatedAt now (zero: the store's clock). ErrNotFound if the zone does
	// not exist.
	SetPolicy(ctx context.Context, zone string, doc []byte, now time.Time) (ZonePolicy, error)

	// Snapshot returns the zone's devices and the revision they reflect,
	// read consistently.
	Snapshot(ctx context.Context, zone string) (rev int64, devices []Device, err error)
	// Changes returns the zone's changes with Rev > since, in order, and the
	// store's current revision. ErrCompacted if changes after since were
	// discarded.
	Changes(ctx context.Context, zone string, since int64) ([]Change, int64, error)

	IdentityStore
	StatsStore

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
