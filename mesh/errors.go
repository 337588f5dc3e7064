package mesh

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/wiremesh/wiremesh/control/api"
)

// ErrKernelModeUnsupported is returned by Join with WithMode(Kernel) on a
// platform without kernel mode (anything but Linux).
var ErrKernelModeUnsupported = errors.New("kernel mode: not supported on this platform (Linux only): use userspace mode")

// ErrNoRoute is matched (errors.Is) by every *NoRouteError.
var ErrNoRoute = errors.New("no route in the mesh")

// NoRouteError is returned by Dial, Ping and friends when the destination
// is neither a member's tunnel address nor inside a member's child
// prefixes. Nothing is sent, and there is no fallback to the host network.
type NoRouteError struct {
	Addr netip.Addr
	// InZone is true when Addr is in the zone's tunnel range but no
	// member holds it (it left, or never was).
	InZone bool
}

func (e *NoRouteError) Error() string {
	if e.InZone {
		return fmt.Sprintf("no route to %s in the mesh: no member of the zone holds this tunnel address", e.Addr)
	}
	return fmt.Sprintf("no route to %s in the mesh: not a member's tunnel address nor inside any member's prefixes", e.Addr)
}

// Is makes errors.Is(err, ErrNoRoute) true.
func (e *NoRouteError) Is(target error) bool { return target == ErrNoRoute }

// ErrAmbiguousName is matched (errors.Is) by every *AmbiguousNameError.
var ErrAmbiguousName = errors.New("hostname held by more than one member")

// AmbiguousNameError is returned by Dial for a hostname that more than one
// member of the zone holds (the node itself included): hostnames are not
// unique, and picking one would let any member capture the traffic meant
// for another by joining under its name. Nothing is sent; dial a tunnel
// address instead.
type AmbiguousNameError struct {
	Name string
	// Addrs holds one tunnel address of each member with the name (IPv4,
	// else IPv6), sorted.
	Addrs []netip.Addr
}

func (e *AmbiguousNameError) Error() string {
	return fmt.Sprintf("hostname %q is ambiguous: %d members of the zone hold it (%v); dial a tunnel address instead",
		e.Name, len(e.Addrs), e.Addrs)
}

// Is makes errors.Is(err, ErrAmbiguousName) true.
func (e *AmbiguousNameError) Is(target error) bool { return target == ErrAmbiguousName }

// codeSentinel is an error matching service errors (*api.Error) by code.
type codeSentinel struct {
	code string
	msg  string
}

func (s *codeSentinel) Error() string { return s.msg }

// Sentinels matching the service's error codes: errors.Is(err,
// ErrPrefixConflict) holds for an error from Join carrying code
// prefix_conflict. errors.As(err, &apiErr) with apiErr *api.Error gives the
// details (Prefix and Owner for a conflict).
var (
	ErrPrefixConflict error = &codeSentinel{api.CodePrefixConflict, "prefix conflicts with another member's prefix or the zone's pools"}
	ErrInvalidPrefix  error = &codeSentinel{api.CodeInvalidPrefix, "invalid prefix"}
	ErrUnauthorized   error = &codeSentinel{api.CodeUnauthorized, "the service refused the credentials"}
)

// serviceError wraps an *api.Error so that it matches the code sentinels.
type serviceError struct {
	op  string
	err *api.Error
}

func (e *serviceError) Error() string {
	msg := e.op + ": " + e.err.Error()
	if e.err.Code == api.CodePrefixConflict && e.err.Owner != "" {
		msg += fmt.Sprintf(" (prefix %s held by %s)", e.err.Prefix, e.err.Owner)
	}
	return msg
}

func (e *serviceError) Unwrap() error { return e.err }

func (e *serviceError) Is(target error) bool {
	s, ok := target.(*codeSentinel)
	return ok && s.code == e.err.Code
}

// wrapService returns err wrapped so that codes match the sentinels, with
// op prefixed. Non-service errors are wrapped with %w.
func wrapService(op string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return &serviceError{op: op, err: ae}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// isTransient reports whether err means "the service could not be reached
// or is failing" (network error, 5xx) rather than a refusal (4xx).
func isTransient(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == 0 && (ae.Code == api.CodeInternal || ae.Code == api.CodeUnavailable)
	}
	return true
}
