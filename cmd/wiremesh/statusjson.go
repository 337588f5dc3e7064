package main

import (
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh"
)

// The format of `wiremesh status --json`, documented in
// docs/STATUS-JSON.md. It is stable: fields may be added, none renamed,
// removed or changed in meaning without a new format_version. Keys are
// snake_case, enums are strings, lists are [] when empty (never null),
// absent values are null.

// statusJSONVersion is the format_version of statusJSON.
const statusJSONVersion = 1

type statusJSON struct {
	FormatVersion    int                `json:"format_version"`
	Self             selfJSON           `json:"self"`
	Peers            []peerJSON         `json:"peers"`
	ControlConnected bool               `json:"control_connected"`
	Revision         int64              `json:"revision"`
	EventsDropped    uint64             `json:"events_dropped"`
	SkippedRoutes    []skippedRouteJSON `json:"skipped_routes"`
	Filter           *filterJSON        `json:"filter"`
}

// filterJSON is the zone policy's inbound filter in force on this member;
// null when the zone has no policy (everything is accepted).
type filterJSON struct {
	Rules   []filterRuleJSON `json:"rules"`
	Dropped uint64           `json:"dropped"`
}

type filterRuleJSON struct {
	Rule     int             `json:"rule"`
	Src      []netip.Prefix  `json:"src"`
	Dst      []netip.Prefix  `json:"dst"`
	Proto    string          `json:"proto"`
	Ports    []api.PortRange `json:"ports"`
	Accepted uint64          `json:"accepted"`
}

type selfJSON struct {
	DeviceID   string           `json:"device_id"`
	Hostname   string           `json:"hostname"`
	Zone       string           `json:"zone"`
	PublicKey  string           `json:"public_key"`
	Addresses  []netip.Addr     `json:"addresses"`
	Prefixes   []netip.Prefix   `json:"prefixes"`
	ZoneIPv4   *netip.Prefix    `json:"zone_ipv4"`
	ZoneIPv6   *netip.Prefix    `json:"zone_ipv6"`
	ListenPort uint16           `json:"listen_port"`
	Endpoints  []netip.AddrPort `json:"endpoints"`
	Mode       string           `json:"mode"`
	Interface  *string          `json:"interface"`
	NAT        *string          `json:"nat"`
	Relay      bool             `json:"relay"`
}

type peerJSON struct {
	Hostname      string         `json:"hostname"`
	PublicKey     string         `json:"public_key"`
	Addresses     []netip.Addr   `json:"addresses"`
	Prefixes      []netip.Prefix `json:"prefixes"`
	Path          *string        `json:"path"`
	Endpoint      *string        `json:"endpoint"`
	LastHandshake *time.Time     `json:"last_handshake"`
	Online        bool           `json:"online"`
	LastSeen      *time.Time     `json:"last_seen"`
	RxBytes       uint64         `json:"rx_bytes"`
	TxBytes       uint64         `json:"tx_bytes"`
	Trimmed       bool           `json:"trimmed"`
}

type skippedRouteJSON struct {
	Prefix netip.Prefix `json:"prefix"`
	Reason string       `json:"reason"`
}

// statusJSONOf converts st to the documented format.
func statusJSONOf(st mesh.Status) statusJSON {
	s := st.Self
	out := statusJSON{
		FormatVersion: statusJSONVersion,
		Self: selfJSON{
			DeviceID:   s.DeviceID,
			Hostname:   s.Hostname,
			Zone:       s.Zone,
			PublicKey:  s.PublicKey.String(),
			Addresses:  nonNil(s.Addrs),
			Prefixes:   nonNil(s.Prefixes),
			ZoneIPv4:   validOrNil(s.ZoneIPv4),
			ZoneIPv6:   validOrNil(s.ZoneIPv6),
			ListenPort: s.ListenPort,
			Endpoints:  nonNil(s.Endpoints),
			Mode:       s.Mode.String(),
			Relay:      s.Relay,
		},
		Peers:            make([]peerJSON, 0, len(st.Peers)),
		ControlConnected: st.ControlConnected,
		Revision:         st.Revision,
		EventsDropped:    st.EventsDropped,
		SkippedRoutes:    make([]skippedRouteJSON, 0, len(st.SkippedRoutes)),
	}
	if s.Interface != "" {
		out.Self.Interface = &s.Interface
	}
	if s.NAT != api.NATUnknown {
		nat := string(s.NAT)
		out.Self.NAT = &nat
	}
	for _, p := range st.Peers {
		pj := peerJSON{
			Hostname:  p.Hostname,
			PublicKey: p.PublicKey.String(),
			Addresses: nonNil(p.Addrs),
			Prefixes:  nonNil(p.Prefixes),
			Online:    p.Online,
			RxBytes:   p.RxBytes,
			TxBytes:   p.TxBytes,
			Trimmed:   p.Trimmed,
		}
		if !p.LastSeen.IsZero() {
			t := p.LastSeen.UTC()
			pj.LastSeen = &t
		}
		if p.Path != "" {
			path := p.Path
			pj.Path = &path
		}
		if p.Endpoint.IsValid() {
			ep := p.Endpoint.String()
			pj.Endpoint = &ep
		}
		if !p.LastHandshake.IsZero() {
			t := p.LastHandshake.UTC()
			pj.LastHandshake = &t
		}
		out.Peers = append(out.Peers, pj)
	}
	for _, r := range st.SkippedRoutes {
		out.SkippedRoutes = append(out.SkippedRoutes, skippedRouteJSON{Prefix: r.Prefix, Reason: r.Reason})
	}
	if f := st.Filter; f.Active {
		out.Filter = &filterJSON{Rules: make([]filterRuleJSON, 0, len(f.Rules)), Dropped: f.Dropped}
		for _, r := range f.Rules {
			out.Filter.Rules = append(out.Filter.Rules, filterRuleJSON{Rule: r.Rule, Src: nonNil(r.Src),
				Dst: nonNil(r.Dst), Proto: r.Proto, Ports: nonNil(r.Ports), Accepted: r.Accepted})
		}
	}
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func validOrNil(p netip.Prefix) *netip.Prefix {
	if !p.IsValid() {
		return nil
	}
	return &p
}
