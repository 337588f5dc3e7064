package ipam

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors. Errors returned by this package match one of them with
// errors.Is; the concrete error adds the operation and the offending input.
var (
	ErrInvalidPrefix  = errors.New("invalid prefix")
	ErrPrefixConflict = errors.New("prefix conflict")
	ErrPoolExhausted  = errors.New("address pool exhausted")
	ErrAddrInUse      = errors.New("address in use")
	ErrAddrOutside    = errors.New("address outside pool")
)

// maxQuoted bounds how much of a rejected input an error message repeats.
const maxQuoted = 64

// PrefixError reports a prefix that failed parsing or validation.
// errors.Is(err, ErrInvalidPrefix) holds. Its message quotes the input and
// says why, e.g.
//
//	invalid prefix "10.1.2.3/16": host bits set (did you mean 10.1.0.0/16?)
type PrefixError struct {
	Input  string // the text as given (for a netip.Prefix, its String form)
	Reason string // why it was rejected, lower case, no trailing period
}

func (e *PrefixError) Error() string {
	in := e.Input
	if len(in) > maxQuoted {
		in = in[:maxQuoted] + "..."
	}
	return fmt.Sprintf("invalid prefix %q: %s", in, e.Reason)
}

// Is reports whether target is ErrInvalidPrefix.
func (e *PrefixError) Is(target error) bool { return target == ErrInvalidPrefix }

// ConflictError reports a prefix that overlaps (equals, lies inside, or
// contains) a prefix already held in a Registry.
// errors.Is(err, ErrPrefixConflict) holds. Message:
//
//	prefix 10.0.1.0/24 overlaps 10.0.0.0/16 held by node1
type ConflictError struct {
	Prefix   netip.Prefix // the prefix that was asked for
	Existing netip.Prefix // the registered prefix it overlaps
	Owner    string       // owner of Existing
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("prefix %s overlaps %s held by %s", e.Prefix, e.Existing, e.Owner)
}

// Is reports whether target is ErrPrefixConflict.
func (e *ConflictError) Is(target error) bool { return target == ErrPrefixConflict }
