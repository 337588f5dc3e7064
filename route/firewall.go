package route

import (
	"fmt"
	"net/netip"
)

// FirewallConfig describes the forwarding rules of a router.
type FirewallConfig struct {
	// Interface is the mesh interface, e.g. "wg0". Required.
	Interface string
	// ChildPrefixes are this router's child prefixes: the only destinations
	// forwarded from the mesh and the only sources forwarded into it.
	// Host bits are masked off. Empty: nothing is forwarded through Interface.
	ChildPrefixes []netip.Prefix
	// Masquerade rewrites the source of traffic forwarded from the mesh into
	// a child prefix to the router's address on the outgoing interface, for
	// LAN subnets whose hosts do not route the mesh back through the router.
	Masquerade bool
	// TableName is the nftables table (family inet) holding the rules.
	// Empty means DefaultTableName + "-" + Interface, e.g. "wiremesh-wg0".
	TableName string
}

// normalize returns a validated copy with defaults filled in.
func (c FirewallConfig) normalize(op string) (FirewallConfig, error) {
	if err := checkIfname(c.Interface); err != nil {
		return c, fmt.Errorf("%s: %w", op, err)
	}
	if c.TableName == "" {
		c.TableName = DefaultTableName + "-" + c.Interface
	}
	if err := checkTableName(c.TableName); err != nil {
		return c, fmt.Errorf("%s: %w", op, err)
	}
	ps, err := normalizePrefixes(op, c.ChildPrefixes)
	if err != nil {
		return c, err
	}
	c.ChildPrefixes = ps
	return c, nil
}

func normalizePrefixes(op string, in []netip.Prefix) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if err := checkPrefix(p); err != nil {
			return nil, fmt.Errorf("%s: %w: child prefix %q: %s", op, ErrInvalid, p, err)
		}
		out = append(out, p.Masked())
	}
	return sortedUnique(out), nil
}

// checkTableName accepts what nft accepts unquoted: letters, digits, '_', '-', '.'.
func checkTableName(name string) error {
	ok := name != "" && len(name) <= 64
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
		default:
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%w: table name %q: want 1-64 letters, digits, '_', '-' or '.'", ErrInvalid, name)
	}
	return nil
}

// InboundRule is one kind of new flow a Firewall accepts from the mesh
// interface once an inbound filter is set (see Firewall.SetInbound): the
// source inside one of Src, the destination inside one of Dst, the
// protocol Proto and, for tcp and udp, the destination port inside one of
// Ports (empty: every port). IPv4 and IPv6 prefixes may be mixed; each
// family matches its own.
type InboundRule struct {
	Src, Dst []netip.Prefix
	// Proto is "tcp", "udp", "icmp" (ICMP and ICMPv6) or "any".
	Proto string
	// Ports are inclusive ranges of destination ports, [first, last].
	Ports [][2]uint16
}

// InboundCounters are the counts of a Firewall's inbound filter since it
// was last set (see Firewall.InboundCounters).
type InboundCounters struct {
	// Accepted holds, per InboundRule, the packets of new flows it
	// accepted (input and forward together).
	Accepted []uint64
	// Dropped counts the packets from the mesh interface that started a
	// new flow no rule accepted.
	Dropped uint64
}
