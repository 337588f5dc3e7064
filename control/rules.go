package control

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/ipam"
)

// The member-input rules of registration and PATCH /v1/devices/self:
// child prefixes (ipam.CheckPrefixes, the one home of those rules) and
// endpoints. docs/LIMITS.md lists them with their error codes.

// checkPrefixes parses child prefixes strictly (text form only) and checks
// them with ipam.CheckPrefixes under the zone's policy, for a device
// holding held (nil at registration: the store checks again with what the
// key holds).
// It returns the prefixes to add, sorted and deduplicated. The store checks
// the same rules in its transaction, and overlaps with other devices.
func checkPrefixes(z store.Zone, held []netip.Prefix, in []string) ([]netip.Prefix, *api.Error) {
	add := make([]netip.Prefix, 0, len(in))
	for _, s := range in {
		p, err := ipam.ParsePrefix(s)
		if err != nil {
			return nil, prefixErr(err)
		}
		add = append(add, p)
	}
	if _, err := ipam.CheckPrefixes(z.Policy(), held, add); err != nil {
		return nil, prefixErr(err)
	}
	slices.SortFunc(add, ipam.ComparePrefix)
	return slices.Compact(add), nil
}

// prefixErr maps an error of ipam's prefix rules, from checkPrefixes or
// from the store, to its API error; nil if err is none of them.
func prefixErr(err error) *api.Error {
	var (
		ce *ipam.ConflictError
		pe *ipam.PrefixError
		le *ipam.LimitError
	)
	switch {
	case errors.As(err, &ce):
		return &api.Error{Code: api.CodePrefixConflict, Message: ce.Error(), Prefix: ce.Existing.String(), Owner: ce.Owner}
	case errors.As(err, &pe) && errors.Is(pe, ipam.ErrPrefixTooWide):
		return apiErr(api.CodePrefixTooWide, "child prefix: %v", pe)
	case errors.As(err, &pe):
		return apiErr(api.CodeInvalidPrefix, "child prefix: %v", pe)
	case errors.As(err, &le):
		return apiErr(api.CodeTooManyPrefixes, "%v", le)
	}
	return nil
}

// checkEndpoints refuses an endpoint list longer than
// maxEndpointsPerRequest (bad_request) or holding an endpoint no member
// could send WireGuard datagrams to (invalid_endpoint): port 0, an
// unspecified, "this network" (0.0.0.0/8), multicast, limited broadcast or
// 240.0.0.0/4 address, an IPv4-mapped IPv6 address (write the IPv4 one), or
// one with an IPv6 zone (meaningless to another host). Loopback is allowed:
// members on one host (tests, demos) reach each other through it.
func checkEndpoints(eps []netip.AddrPort) *api.Error {
	if len(eps) > maxEndpointsPerRequest {
		return apiErr(api.CodeBadRequest, "too many endpoints: %d (max %d)", len(eps), maxEndpointsPerRequest)
	}
	for _, e := range eps {
		if why := endpointReason(e); why != "" {
			return apiErr(api.CodeInvalidEndpoint, "endpoint %q: %s", e, why)
		}
	}
	return nil
}

// badEndpointNets are IPv4 ranges no endpoint may be in.
var badEndpointNets = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),   // "this network", incl. unspecified
	netip.MustParsePrefix("224.0.0.0/4"), // multicast
	netip.MustParsePrefix("240.0.0.0/4"), // reserved, incl. 255.255.255.255
}

// endpointReason says why e is not a usable endpoint; "" if it is.
func endpointReason(e netip.AddrPort) string {
	a := e.Addr()
	switch {
	case !e.IsValid():
		return "not an address and port"
	case e.Port() == 0:
		return "port 0"
	case a.Zone() != "":
		return "an IPv6 zone means nothing to other members"
	case a.Is4In6():
		return "IPv4-mapped IPv6: write the IPv4 address"
	case a.IsUnspecified():
		return "unspecified address"
	case a.IsMulticast():
		return "multicast address"
	}
	for _, n := range badEndpointNets {
		if n.Contains(a) {
			return "not a unicast address (" + n.String() + ")"
		}
	}
	return ""
}
