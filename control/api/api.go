// Package api holds the wire types and error codes of the wiremesh
// coordination protocol, shared by the service (package control) and the
// agent (package mesh). Everything here is plain JSON over HTTP.
package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/curve25519"
)

// MaxBodyBytes is the largest request body the service accepts.
const MaxBodyBytes = 1 << 20

// DefaultZone is the zone that always exists.
const DefaultZone = "default"

// Stable error codes carried in Error.Code. Clients match on these, never on
// messages.
const (
	CodeBadRequest      = "bad_request"       // 400: malformed body, field or parameter
	CodeInvalidPrefix   = "invalid_prefix"    // 400: a prefix that breaks the prefix rules
	CodePrefixTooWide   = "prefix_too_wide"   // 400: a prefix shorter than the zone allows (docs/LIMITS.md)
	CodeInvalidKey      = "invalid_key"       // 400: a public key that is not a canonical X25519 key in 32 bytes of base64
	CodeInvalidEndpoint = "invalid_endpoint"  // 400: an endpoint that is not a usable unicast address and port
	CodeUnauthorized    = "unauthorized"      // 401: missing, wrong, expired or used credentials; bad proof
	CodeRevoked         = "revoked"           // 401: the device's key was revoked (or retired by a key rotation); it can never register again
	CodeTokenExpired    = "token_expired"     // 401: the device token's lifetime ended; register again with a join token
	CodeForbidden       = "forbidden"         // 403: credentials valid but not for this resource
	CodeNotFound        = "not_found"         // 404: unknown zone, device, token or prefix
	CodeConflict        = "conflict"          // 409: the resource exists already (zone name, ...)
	CodePrefixConflict  = "prefix_conflict"   // 409: a prefix overlaps another member's prefix or the zone's pools
	CodeAddrInUse       = "addr_in_use"       // 409: a requested tunnel address is taken
	CodeTooManyPrefixes = "too_many_prefixes" // 409: the device would hold more child prefixes than the zone allows
	CodeHostnameTaken   = "hostname_taken"    // 409: the hostname and all its suffixed forms are taken in the zone
	CodeTooLarge        = "too_large"         // 413: body over MaxBodyBytes
	CodeRateLimited     = "rate_limited"      // 429: too many requests or failed authentications from this client; see Retry-After
	CodePoolExhausted   = "pool_exhausted"    // 507: no free tunnel address left in the zone
	CodeInternal        = "internal"          // 500: the service failed; nothing was changed
	CodeUnavailable     = "unavailable"       // 503: shutting down, or its database is unreachable; retry (Retry-After)
)

// StatusForCode returns the HTTP status that goes with an error code.
func StatusForCode(code string) int {
	switch code {
	case CodeBadRequest, CodeInvalidPrefix, CodePrefixTooWide, CodeInvalidKey, CodeInvalidEndpoint:
		return 400
	case CodeInvalidPolicy, CodeUnknownTag, CodeInvalidSelector, CodeInvalidPort, CodeInvalidProto:
		return 400
	case CodeUnauthorized, CodeRevoked, CodeTokenExpired:
		return 401
	case CodeForbidden:
		return 403
	case CodeNotFound:
		return 404
	case CodeConflict, CodePrefixConflict, CodeAddrInUse, CodeTooManyPrefixes, CodeHostnameTaken:
		return 409
	case CodeTooLarge:
		return 413
	case CodeRateLimited:
		return 429
	case CodePoolExhausted:
		return 507
	case CodeUnavailable:
		return 503
	default:
		return 500
	}
}

// Error is the body of every non-2xx response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Prefix and Owner are set on prefix_conflict: the existing prefix that
	// overlaps and the hostname (or "tunnel pool") that holds it.
	Prefix string `json:"prefix,omitempty"`
	Owner  string `json:"owner,omitempty"`
	// Line is set on the policy codes (policy.go): the line of the policy
	// document the error is about.
	Line int `json:"line,omitempty"`
	// Status is the HTTP status the error arrived with (client side only).
	Status int `json:"-"`
}

func (e *Error) Error() string {
	return e.Code + ": " + e.Message
}

// Key is a Curve25519 key (WireGuard public key or service static key).
// On the wire it is standard base64 with padding (44 characters).
type Key [32]byte

// ParseKey parses a base64 key, rejecting anything that does not decode to
// exactly 32 bytes.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("key %q: not base64: %w", s, err)
	}
	if len(b) != 32 {
		return k, fmt.Errorf("key %q: %d bytes, want 32", s, len(b))
	}
	copy(k[:], b)
	return k, nil
}

// ParsePublicKey parses a device's public key with ParseKey and refuses a
// key that is not a canonical X25519 public key (see Key.CheckPublic).
func ParsePublicKey(s string) (Key, error) {
	k, err := ParseKey(s)
	if err != nil {
		return k, err
	}
	if err := k.CheckPublic(); err != nil {
		return Key{}, err
	}
	return k, nil
}

// ErrNonCanonicalKey matches the errors of Key.CheckPublic.
var ErrNonCanonicalKey = errors.New("not a canonical X25519 public key")

// CheckPublic reports whether k is a canonical X25519 public key: not all
// zeroes, bit 255 clear, the little-endian u-coordinate below 2^255-19,
// and not a point of small order. X25519 ignores bit 255 and reduces u
// modulo 2^255-19, so every other 32-byte string is a second name for a
// canonical key: accepted, one private key could register as two devices.
// A small-order point gives an all-zero shared secret that proves nothing.
// Errors match ErrNonCanonicalKey.
func (k Key) CheckPublic() error {
	switch {
	case k.IsZero():
		return fmt.Errorf("key %s: %w: all zeroes", k, ErrNonCanonicalKey)
	case k[31]&0x80 != 0:
		return fmt.Errorf("key %s: %w: bit 255 is set", k, ErrNonCanonicalKey)
	case k.aboveFieldPrime():
		return fmt.Errorf("key %s: %w: not reduced modulo 2^255-19", k, ErrNonCanonicalKey)
	}
	// A clamped scalar is a multiple of the cofactor 8, so X25519 with
	// any scalar is all zeroes (an error) exactly for small-order points.
	if _, err := curve25519.X25519(smallOrderProbe[:], k[:]); err != nil {
		return fmt.Errorf("key %s: %w: a point of small order", k, ErrNonCanonicalKey)
	}
	return nil
}

// smallOrderProbe is any scalar; see CheckPublic.
var smallOrderProbe = [32]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

// aboveFieldPrime reports whether k, bit 255 clear, is >= 2^255-19 (little
// endian: 0xed, then thirty 0xff, then 0x7f).
func (k Key) aboveFieldPrime() bool {
	if k[31] != 0x7f || k[0] < 0xed {
		return false
	}
	for _, b := range k[1:31] {
		if b != 0xff {
			return false
		}
	}
	return true
}

func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zeroes (unset).
func (k Key) IsZero() bool { return k == Key{} }

func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// Info is the answer of GET /v1/info. It needs no credentials.
type Info struct {
	Version string `json:"version"`
	// PublicKey is the service's static X25519 key; registrations prove
	// possession of the device key against it (see RegisterRequest).
	PublicKey Key `json:"public_key"`
	// STUNAddr is host:port of the STUN binding responder ("" if none). The
	// host may be empty or unspecified, meaning "the host of the service URL".
	STUNAddr string `json:"stun_addr,omitempty"`
	// STUNAltAddr is a second STUN responder (same form as STUNAddr) on
	// another port: a member that gets two different reflexive addresses
	// from the two is behind a symmetric NAT. "" if none.
	STUNAltAddr string `json:"stun_alt_addr,omitempty"`
	// Relay is true when the service relays WireGuard datagrams between
	// members of a zone at RelayPath.
	Relay bool `json:"relay,omitempty"`
	// DefaultZone is the zone used when a request names none.
	DefaultZone string `json:"default_zone"`
	// MaxClockSkew is how far a registration timestamp may be from the
	// service's clock.
	MaxClockSkewSeconds int `json:"max_clock_skew_seconds"`
	// EphemeralTimeoutSeconds is how long an ephemeral device may stay
	// offline before the service deletes it (absent from older services).
	EphemeralTimeoutSeconds int `json:"ephemeral_timeout_seconds,omitempty"`
}

// RegisterRequest is the body of POST /v1/devices, authorized by a join
// token (Authorization: Bearer TOKEN).
//
// Proof is HMAC-SHA256(k, r.SigningBytes(JoinTokenHash(joinSecret))) with
// k = HKDF-SHA256(secret = X25519(device private, service public),
// salt = nil, info = ProofInfo), 32 bytes, where joinSecret is the join
// token the request is sent with. See ProofKey and Sign in proof.go. The
// service accepts a proof once, whether the registration succeeds or not,
// so every attempt carries a new Timestamp or Nonce and a new Proof.
type RegisterRequest struct {
	PublicKey Key    `json:"public_key"`
	Hostname  string `json:"hostname"`
	// Zone may be empty: the join token's zone is used. If set it must
	// equal the token's zone.
	Zone string `json:"zone,omitempty"`
	// ChildPrefixes are CIDR strings, validated by the service (invalid_prefix,
	// prefix_conflict). Prefixes already held by this key are kept; these are added.
	ChildPrefixes []string `json:"child_prefixes,omitempty"`
	// Endpoints are the addresses other members may send WireGuard UDP to.
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// RequestedIPv4 asks for a specific tunnel address; honoured when free
	// (addr_in_use otherwise). Ignored when the key is already registered.
	RequestedIPv4 netip.Addr `json:"requested_ipv4,omitzero"`
	// Ephemeral asks the service to delete the device once it has been
	// offline for a while (Info.EphemeralTimeoutSeconds), and lets the
	// device delete itself when it leaves (DELETE /v1/devices/self).
	// Re-registering replaces it.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// Timestamp is Unix seconds; rejected when further than
	// Info.MaxClockSkewSeconds from the service clock.
	Timestamp int64 `json:"timestamp"`
	// Nonce is random (hex, up to 64 characters), new for every attempt, so
	// two registrations in the same second never carry the same proof.
	Nonce string `json:"nonce,omitempty"`
	// Proof is base64 of the 32-byte MAC.
	Proof []byte `json:"proof"`
}

// RegisterResponse is the answer of POST /v1/devices (201 on a first
// registration, 200 when the key was registered before).
type RegisterResponse struct {
	DeviceID      string         `json:"device_id"`
	Zone          string         `json:"zone"`
	Hostname      string         `json:"hostname"`
	IPv4          netip.Addr     `json:"ipv4"`
	IPv6          netip.Addr     `json:"ipv6"`
	ZoneIPv4      netip.Prefix   `json:"zone_ipv4"`
	ZoneIPv6      netip.Prefix   `json:"zone_ipv6"`
	ChildPrefixes []netip.Prefix `json:"child_prefixes"`
	// DeviceToken authorizes the device's own calls (watch, PATCH self,
	// release). A new one is issued at every registration; older ones stay
	// valid until they expire, the device rotates its token, or the device
	// is deleted.
	DeviceToken string `json:"device_token"`
	// DeviceTokenExpiresAt is when DeviceToken expires (absent: never);
	// rotate it before (POST /v1/devices/self/token).
	DeviceTokenExpiresAt time.Time `json:"device_token_expires_at,omitzero"`
	// Ephemeral echoes the request.
	Ephemeral bool `json:"ephemeral,omitempty"`
}

// UpdateSelfRequest is the body of PATCH /v1/devices/self. Nil fields are
// left alone.
type UpdateSelfRequest struct {
	Hostname *string `json:"hostname,omitempty"`
	// Endpoints, when non-nil, replaces the endpoint list.
	Endpoints *[]netip.AddrPort `json:"endpoints,omitempty"`
	// Candidates, when non-nil, replaces the typed candidate list, and the
	// endpoint list too (with the candidates' addresses) unless Endpoints
	// is set as well.
	Candidates *[]Candidate `json:"candidates,omitempty"`
	// NAT, when non-nil, replaces what the device reports about its NAT.
	NAT *NATType `json:"nat,omitempty"`
	// AddChildPrefixes are CIDR strings to add (same rules as registration).
	AddChildPrefixes []string `json:"add_child_prefixes,omitempty"`
}

// Device is what GET /v1/devices/self, PATCH /v1/devices/self and the
// admin device API return.
type Device struct {
	ID            string           `json:"id"`
	Zone          string           `json:"zone"`
	Hostname      string           `json:"hostname"`
	PublicKey     Key              `json:"public_key"`
	IPv4          netip.Addr       `json:"ipv4"`
	IPv6          netip.Addr       `json:"ipv6"`
	ChildPrefixes []netip.Prefix   `json:"child_prefixes"`
	Endpoints     []netip.AddrPort `json:"endpoints"`
	Candidates    []Candidate      `json:"candidates,omitempty"`
	NAT           NATType          `json:"nat,omitempty"`
	// Tags are those of the join token the device last registered with.
	Tags      []string  `json:"tags,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Ephemeral devices are deleted by the service once offline for a
	// while.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// Online (admin API only) reports whether the device holds a watch
	// stream to the service (any replica sharing its store). Absent in
	// answers to the device itself.
	Online *bool `json:"online,omitempty"`
	// LastSeen (admin API only) is when the device last held a watch
	// stream (renewed every few seconds while it does). Absent if never.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Stats (admin API only) is the device's latest report of its peers
	// (POST /v1/devices/self/stats): path, last handshake and bytes per
	// peer. Absent until it reports.
	Stats *DeviceStats `json:"stats,omitempty"`
}

// Peer is a member as other members see it in the watch stream.
type Peer struct {
	ID            string           `json:"id"`
	Hostname      string           `json:"hostname"`
	PublicKey     Key              `json:"public_key"`
	IPv4          netip.Addr       `json:"ipv4"`
	IPv6          netip.Addr       `json:"ipv6"`
	ChildPrefixes []netip.Prefix   `json:"child_prefixes"`
	Endpoints     []netip.AddrPort `json:"endpoints"`
	// Candidates are the typed addresses the peer may be reached at (its
	// Endpoints with how it learned each). Empty from a member that
	// reports only Endpoints.
	Candidates []Candidate `json:"candidates,omitempty"`
	// NAT is what the peer learned about its NAT.
	NAT NATType `json:"nat,omitempty"`
	// Online reports whether the peer holds a watch stream to the service
	// (absent from services that do not track it); LastSeen is when it
	// last did. Presence events carry the changes.
	Online   *bool     `json:"online,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Generation counts the peer's registrations (each start of its
	// agent registers): when it grows, the peer restarted and lost its
	// WireGuard sessions, and members handshake with it again at once.
	// 0 from a service that does not count them.
	Generation uint64 `json:"generation,omitempty"`
}

// Watch event types.
const (
	EventSnapshot  = "snapshot"  // Peers holds the whole zone at Revision
	EventUpsert    = "upsert"    // Peer was added or changed at Revision
	EventRemove    = "remove"    // Peer (ID and PublicKey set) left at Revision
	EventHeartbeat = "heartbeat" // nothing changed; Revision is the latest
	// EventPresence: Peer (ID, PublicKey, Hostname, Online, LastSeen set)
	// went online or offline at Revision. Clients that do not know it
	// skip it.
	EventPresence = "presence"
)

// WatchEvent is one line of the NDJSON stream of
// GET /v1/zones/{zone}/watch?since=REV (device token).
//
// The stream starts with a snapshot (since absent, 0, or older than the
// retained history) or with the upserts and removes after since, in revision
// order followed by one heartbeat; then one event per change, and
// heartbeats while idle. Revisions never decrease, and increase from one
// change to the next. The device's own entry is included; clients skip it.
//
// In a zone with a policy the stream is the receiving member's view: the
// snapshot holds only the peers it may exchange traffic with (in either
// direction) and its Filter; a change of policy or membership brings
// upserts for peers that become visible, removes for peers that no longer
// are, and an EventFilter event when its filter changes, all with the
// revision of that change and in one write. A client resuming with since=
// in such a zone (or from before the last policy change) gets a fresh
// snapshot.
//
// A deleted device is told about its own removal: the remove event whose
// Peer.ID is its own is the last line of its stream, and the service then
// ends the stream (reconnecting with its token is refused as unauthorized).
// A stream can also end without it (the client fell too far behind, the
// service shut down); a client tells the two apart by reconnecting.
type WatchEvent struct {
	Type     string `json:"type"`
	Revision int64  `json:"revision"`
	Peers    []Peer `json:"peers,omitempty"`
	Peer     *Peer  `json:"peer,omitempty"`
	// Filter is the receiving member's inbound filter, in a snapshot and in
	// an EventFilter event (see Filter; nil: the zone has no policy).
	Filter *Filter `json:"filter,omitempty"`
}

// Zone is a separate mesh: its own tunnel pools and prefix space.
type Zone struct {
	Name           string       `json:"name"`
	IPv4Pool       netip.Prefix `json:"ipv4_pool"`
	IPv6Pool       netip.Prefix `json:"ipv6_pool"`
	AllowExitNodes bool         `json:"allow_exit_nodes"`
	// The zone's child-prefix limits in force (defaults filled in): the
	// shortest IPv4 and IPv6 prefix other than /0, and the most prefixes
	// one device may hold. See docs/LIMITS.md.
	MinPrefixBits4 int       `json:"min_prefix_bits_ipv4"`
	MinPrefixBits6 int       `json:"min_prefix_bits_ipv6"`
	MaxPrefixes    int       `json:"max_prefixes_per_device"`
	CreatedAt      time.Time `json:"created_at"`
}

// CreateZoneRequest is the body of POST /v1/zones (admin). Empty pools get
// defaults: IPv4 100.64.0.0/16, IPv6 a ULA /64 derived from the name. Zero
// limits get the defaults (IPv4 /12, IPv6 /32, 64 prefixes per device).
type CreateZoneRequest struct {
	Name           string `json:"name"`
	IPv4Pool       string `json:"ipv4_pool,omitempty"`
	IPv6Pool       string `json:"ipv6_pool,omitempty"`
	AllowExitNodes bool   `json:"allow_exit_nodes,omitempty"`
	MinPrefixBits4 int    `json:"min_prefix_bits_ipv4,omitempty"` // 1–32
	MinPrefixBits6 int    `json:"min_prefix_bits_ipv6,omitempty"` // 1–128
	MaxPrefixes    int    `json:"max_prefixes_per_device,omitempty"`
}

// CreateTokenRequest is the body of POST /v1/tokens (admin).
type CreateTokenRequest struct {
	Zone     string `json:"zone"`
	Reusable bool   `json:"reusable,omitempty"`
	// ExpiresInSeconds, when > 0, makes the token expire that long after creation.
	ExpiresInSeconds int64 `json:"expires_in_seconds,omitempty"`
	// Tags are given to every device that registers with the token (the
	// policy's tag:NAME selectors; names as in the policy's "tags").
	Tags []string `json:"tags,omitempty"`
}

// JoinToken describes a join token. Token (the secret) is only present in
// the answer to its creation.
type JoinToken struct {
	ID        string    `json:"id"`
	Token     string    `json:"token,omitempty"`
	Zone      string    `json:"zone"`
	Reusable  bool      `json:"reusable"`
	Tags      []string  `json:"tags,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	UsedAt    time.Time `json:"used_at,omitzero"`
	CreatedAt time.Time `json:"created_at"`
}

// PrefixEntry is one allocated child prefix (admin API).
type PrefixEntry struct {
	Zone     string       `json:"zone"`
	Prefix   netip.Prefix `json:"prefix"`
	DeviceID string       `json:"device_id"`
	Hostname string       `json:"hostname"`
}
