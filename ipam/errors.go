package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors. Errors returned by this package match one of them with
// errors.Is; the concrete error adds the operation and the offending input.
var (
	// ErrInvalidPrefix: a prefix breaks the form or meaning rules
	// (*PrefixError).
	ErrInvalidPrefix = errors.New("invalid prefix")
	// ErrPrefixTooWide: a prefix is shorter than the zone allows. It is a
	// *PrefixError, so ErrInvalidPrefix matches as well.
	ErrPrefixTooWide = errors.New("prefix too wide")
	// ErrPrefixConflict: a prefix overlaps one held already
	// (*ConflictError).
	ErrPrefixConflict = errors.New("prefix conflict")
	// ErrTooManyPrefixes: a device would hold more prefixes than the zone
	// allows (*LimitError).
	ErrTooManyPrefixes = errors.New("too many child prefixes")
)

// maxQuoted bounds how much of a rejected input an error message repeats.
const maxQuoted = 64

// PrefixError reports a prefix that failed parsing or validation.
// errors.Is(err, ErrInvalidPrefix) holds, and errors.Is(err, Kind) when Kind
// is set. Its message quotes the input and says why, e.g.
//
//	invalid prefix "10.1.2.3/16": host bits set (did you mean 10.1.0.0/16?)
type PrefixError struct {
	Input  string // the text as given (for a netip.Prefix, its String form)
	Reason string // why it was rejected, lower case, no trailing period
	// Kind is a more specific sentinel (ErrPrefixTooWide), or nil.
	Kind error
}

func (e *PrefixError) Error() string {
	in := e.Input
	if len(in) > maxQuoted {
		in = in[:maxQuoted] + "..."
	}
	return fmt.Sprintf("invalid prefix %q: %s", in, e.Reason)
}

// Is reports whether target is ErrInvalidPrefix or e.Kind.
func (e *PrefixError) Is(target error) bool {
	return target == ErrInvalidPrefix || e.Kind != nil && target == e.Kind
}

// LimitError reports a device that would hold more child prefixes than its
// zone allows. errors.Is(err, ErrTooManyPrefixes) holds.
type LimitError struct {
	Count int // how many the device would hold
	New   int // how many of them are new
	Max   int // the zone's limit
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("too many child prefixes: the device would hold %d (%d new); the zone allows %d per device",
		e.Count, e.New, e.Max)
}

// Is reports whether target is ErrTooManyPrefixes.
func (e *LimitError) Is(target error) bool { return target == ErrTooManyPrefixes }

// Owners named by a *ConflictError that is not about another device.
const (
	// TunnelPoolOwner holds the zone's tunnel pools.
	TunnelPoolOwner = "tunnel pool"
	// SameDeviceOwner is the device asking: its prefixes may not overlap
	// each other.
	SameDeviceOwner = "this device"
)

// ConflictError reports a prefix that overlaps (equals, lies inside, or
// contains) a prefix held already: by another device, by the zone's tunnel
// pools (Owner TunnelPoolOwner), or by the device asking (Owner
// SameDeviceOwner). errors.Is(err, ErrPrefixConflict) holds. Message:
//
//	prefix 10.0.1.0/24 overlaps 10.0.0.0/16 held by node1
type ConflictError struct {
	Prefix   netip.Prefix // the prefix that was asked for
	Existing netip.Prefix // the prefix it overlaps
	OwnerID  string       // device id of another holder; "" otherwise
	Owner    string       // hostname of another holder, TunnelPoolOwner or SameDeviceOwner
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("prefix %s overlaps %s held by %s", e.Prefix, e.Existing, e.Owner)
}

// Is reports whether target is ErrPrefixConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrPrefixConflict }
