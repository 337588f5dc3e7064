package store

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/ipam"
)

// Helpers for Store implementations outside this package (PostgreSQL), so
// that every store applies the same rules and writes the same change-log
// format.

// NewDeviceID returns a random device id, "dev_" and 16 hex digits.
func NewDeviceID() string { return newDeviceID() }

// NormalizeZone fills z's defaults (pools, CreatedAt = now when zero) and
// validates its pools, as CreateZone requires.
func NormalizeZone(z Zone, now time.Time) (Zone, error) { return normalizeZone(z, now) }

// CheckJoinToken checks that t may register a device in zone at now:
// ErrTokenInvalid (with the reason, never the secret) otherwise.
func CheckJoinToken(t JoinToken, zone string, now time.Time) error {
	return checkJoinToken(t, zone, now)
}

// CheckHeldPrefix rejects a prefix that can never be held (invalid, not
// canonical, IPv4-mapped), as ReleasePrefix must.
func CheckHeldPrefix(p netip.Prefix) error { return checkChildPrefix(p) }

// CheckEndpoints rejects an invalid endpoint.
func CheckEndpoints(eps []netip.AddrPort) error { return checkEndpoints(eps) }

// EncodeChangeDevice is the stored form of a device in the change log
// (JSON with names of its own, stable across Go renames).
func EncodeChangeDevice(d Device) (string, error) { return encodeDevice(d) }

// DecodeChangeDevice is the inverse of EncodeChangeDevice.
func DecodeChangeDevice(s string) (Device, error) { return decodeDevice(s) }

// MaxHostnameSuffix bounds the search for a free suffixed hostname: past
// "-MaxHostnameSuffix" a store gives ErrHostnameTaken.
const MaxHostnameSuffix = maxHostnameSuffix

// SuffixedHostname returns h with "-n" appended, h cut (at a rune
// boundary) so that the result fits a hostname's length limit, as the
// stores name a device whose hostname is taken.
func SuffixedHostname(h string, n int) string { return suffixedHostname(h, n) }

// CheckCandidates refuses a reachability candidate without an address or a
// type, for every store's UpdateDevice.
func CheckCandidates(cs []Candidate) error { return checkCandidates(cs) }

// EncodeCandidates is how every store keeps a device's candidates: a JSON
// array ("[]" for none).
func EncodeCandidates(cs []Candidate) (string, error) { return encodeCandidates(cs) }

// ApplyReach applies p's endpoints, candidates and NAT kind to d and says
// whether anything changed (an update repeating them records nothing).
func ApplyReach(d *Device, p UpdateParams) bool {
	changed := false
	if p.Endpoints != nil && !slices.Equal(*p.Endpoints, d.Endpoints) {
		d.Endpoints, changed = nilIfEmpty(slices.Clone(*p.Endpoints)), true
	}
	if p.Candidates != nil && !slices.Equal(*p.Candidates, d.Candidates) {
		d.Candidates, changed = nilIfEmpty(slices.Clone(*p.Candidates)), true
	}
	if p.NAT != nil && *p.NAT != d.NAT {
		d.NAT, changed = *p.NAT, true
	}
	return changed
}

// ZonePools is a zone with its tunnel address pools ready for allocation.
type ZonePools struct {
	Zone
	V4, V6 *ipam.Pool
}

// NewZonePools builds the pools of z, for every store's allocation.
func NewZonePools(z Zone) (ZonePools, error) {
	zp := ZonePools{Zone: z}
	var err error
	if zp.V4, err = ipam.NewPool(z.IPv4Pool); err != nil {
		return ZonePools{}, fmt.Errorf("zone %q: IPv4 pool %s: %w", z.Name, z.IPv4Pool, err)
	}
	if zp.V6, err = ipam.NewPool(z.IPv6Pool); err != nil {
		return ZonePools{}, fmt.Errorf("zone %q: IPv6 pool %s: %w", z.Name, z.IPv6Pool, err)
	}
	return zp, nil
}

// Capacity is the number of host indexes usable in both pools.
func (z ZonePools) Capacity() uint64 {
	return min(z.V4.Capacity(), z.V6.Capacity())
}
