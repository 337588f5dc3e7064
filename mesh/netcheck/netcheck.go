// Package netcheck reports what the host's network allows a wiremesh
// member to do, without joining: whether UDP reaches the coordination
// service's STUN responders (IPv4 and IPv6), the public address and port
// they see, whether that mapping varies by destination (a symmetric NAT,
// told apart by the service's two STUN ports), the latency to the service
// over STUN and HTTPS, whether its relay answers, and the local addresses a
// member would advertise. `wiremesh netcheck` prints it.
//
// A check sends a few STUN binding requests from a fresh UDP socket per
// address family (not the WireGuard port of a running agent, whose NAT
// mapping may differ) and two GET /v1/info requests; it needs the service
// URL and, for an https:// service with a self-signed certificate, the
// join token or fingerprint that pins it.
package netcheck

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/controlclient"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// DefaultUDPTimeout is how long a check waits for STUN answers.
const DefaultUDPTimeout = 3 * time.Second

// retransmitEvery is how often an unanswered STUN request is sent again
// (a new transaction) within the UDP timeout.
const retransmitEvery = 500 * time.Millisecond

// Config says which service to check against. The zero value of each
// optional field is documented.
type Config struct {
	// URL is the service URL (https://host:port, as for joining). It may
	// carry a join token in its fragment. Required.
	URL string
	// Token is a join token of the service: only the certificate
	// fingerprint it carries is used (nothing is registered). Empty: the
	// URL fragment's, or none.
	Token string
	// Fingerprint pins the service certificate (SHA-256, 32 bytes); it
	// overrides the token's. Empty: the token's, else the system roots.
	Fingerprint []byte
	// InsecureHTTP allows an http:// URL to a non-loopback host.
	InsecureHTTP bool
	// DeviceToken, when set (a joined member's), lets the relay check
	// open the relay's WebSocket. Empty: the relay is checked up to its
	// authentication (see Relay).
	DeviceToken string
	// UDPTimeout bounds the wait for STUN answers. Zero: DefaultUDPTimeout.
	UDPTimeout time.Duration
	// Logger receives debug logs. Nil: quiet.
	Logger *slog.Logger
}

// NAT kinds in Family.NAT and Report.NAT (the values of api.NATType).
const (
	NATUnknown             = api.NATUnknown
	NATNone                = api.NATNone
	NATEndpointIndependent = api.NATEndpointIndependent
	NATSymmetric           = api.NATSymmetric
)

// Report is the outcome of Run.
type Report struct {
	// Service is the service URL checked (without a token).
	Service string
	// ServiceVersion is the version the service reports.
	ServiceVersion string
	// HTTPSLatency is the round trip of one GET /v1/info on an open
	// connection (no TCP or TLS handshake in it).
	HTTPSLatency time.Duration
	// UDP is whether any STUN responder answered, in either family.
	UDP bool
	// IPv4 and IPv6 are the checks per address family.
	IPv4, IPv6 Family
	// NAT is the mapping seen over IPv4, or over IPv6 when IPv4 gave no
	// answer: NATUnknown when neither could tell.
	NAT api.NATType
	// Relay is the check of the service's relay.
	Relay Relay
	// LocalAddrs are the interface addresses a member would advertise as
	// local candidates (the address towards the service first).
	LocalAddrs []netip.Addr
	// Warnings are what a person should know, in words (UDP blocked, no
	// STUN, relay unreachable).
	Warnings []string
}

// Family is the STUN check over one address family.
type Family struct {
	// Checked is whether the service has a STUN responder of this family
	// and the host could send to it; when false, Err says why.
	Checked bool
	// Probes are the service's STUN responders of this family, the
	// primary first.
	Probes []Probe
	// Mapped is the public address and port the primary responder saw
	// (the first to answer when the primary did not); invalid: no answer.
	Mapped netip.AddrPort
	// Latency is the shortest STUN round trip; zero: no answer.
	Latency time.Duration
	// NAT compares the mapped addresses: NATNone when the mapped address
	// is the socket's own, NATSymmetric when the two responders saw
	// different ones (the mapping varies by destination),
	// NATEndpointIndependent when they saw the same one, NATUnknown when
	// fewer than two answered.
	NAT api.NATType
	// Err says why the family was not checked, or why no answer came.
	Err string
}

// Probe is one STUN responder's answer.
type Probe struct {
	Server netip.AddrPort
	// Mapped is the address the responder saw; invalid: no answer.
	Mapped netip.AddrPort
	// Latency is the round trip of the answered request.
	Latency time.Duration
}

// Relay is the check of the service's relay (a WebSocket over the
// service's HTTPS port).
type Relay struct {
	// Offered is whether the service runs a relay (its /v1/info says so).
	Offered bool
	// Reachable is whether the relay answered: with a device token the
	// WebSocket opened; without one the upgrade request was refused for
	// want of credentials by the relay itself (so HTTPS reaches it).
	Reachable bool
	// Authenticated is whether the WebSocket was opened with a device
	// token (Config.DeviceToken).
	Authenticated bool
	// Err says why it is not reachable.
	Err string
}

// Run checks the network against the service. It fails only when the
// service cannot be asked at all (bad URL, unreachable, untrusted
// certificate); what the network does not allow (UDP blocked, no IPv6) is
// in the report, with Warnings in words.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	timeout := cfg.UDPTimeout
	if timeout <= 0 {
		timeout = DefaultUDPTimeout
	}
	c, err := controlclient.New(controlclient.Config{
		URL:          cfg.URL,
		Token:        cfg.Token,
		Fingerprint:  cfg.Fingerprint,
		InsecureHTTP: cfg.InsecureHTTP,
		Logger:       cfg.Logger,
		RetryMax:     -1,
		Timeout:      10 * time.Second,
		UserAgent:    "wiremesh-netcheck",
	})
	if err != nil {
		return nil, fmt.Errorf("netcheck.Run: %w", err)
	}
	defer c.Close()
	if cfg.DeviceToken != "" {
		c.SetDeviceToken(cfg.DeviceToken)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("netcheck.Run: %w", err)
	}
	r := &Report{Service: redact(cfg.URL), ServiceVersion: info.Version}
	start := time.Now()
	if _, err := c.Info(ctx); err != nil {
		return nil, fmt.Errorf("netcheck.Run: %w", err)
	}
	r.HTTPSLatency = time.Since(start)

	servers, err := stunServers(ctx, cfg.URL, info)
	if err != nil {
		return nil, fmt.Errorf("netcheck.Run: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { r.IPv4 = checkFamily(ctx, "udp4", servers.v4, timeout) })
	wg.Go(func() { r.IPv6 = checkFamily(ctx, "udp6", servers.v6, timeout) })
	wg.Go(func() { r.Relay = checkRelay(ctx, c, info) })
	towardService, _ := c.LocalAddrFor(ctx)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("netcheck.Run: %w", context.Cause(ctx))
	}

	r.LocalAddrs = magicsock.CandidateAddrs(magicsock.InterfaceAddrs(), nil)
	if towardService.IsValid() && !slices.Contains(r.LocalAddrs, towardService) {
		r.LocalAddrs = append([]netip.Addr{towardService}, r.LocalAddrs...)
	}
	r.UDP = r.IPv4.Mapped.IsValid() || r.IPv6.Mapped.IsValid()
	r.NAT = r.IPv4.NAT
	if !r.IPv4.Mapped.IsValid() {
		r.NAT = r.IPv6.NAT
	}
	r.Warnings = warnings(r, servers, timeout)
	return r, nil
}

func warnings(r *Report, s stunSet, timeout time.Duration) []string {
	var w []string
	if len(s.v4) == 0 && len(s.v6) == 0 {
		w = append(w, "the service runs no STUN responder: UDP cannot be checked")
	}
	for _, f := range []Family{r.IPv4, r.IPv6} {
		if f.Checked && !f.Mapped.IsValid() {
			relay := "the relay will be used"
			if r.UDP {
				relay = "the other address family will be used"
			}
			w = append(w, fmt.Sprintf("UDP to %s got no answer in %s: %s", f.Probes[0].Server, timeout, relay))
		}
	}
	if r.NAT == NATSymmetric {
		w = append(w, "the NAT maps each destination to another port (symmetric): members behind it reach others directly only when those have a reachable address; otherwise the relay is used")
	}
	if r.Relay.Offered && !r.Relay.Reachable {
		w = append(w, "the relay cannot be reached ("+r.Relay.Err+"): members without a direct path cannot talk")
	}
	if !r.Relay.Offered {
		w = append(w, "the service runs no relay: members without a direct path cannot talk")
	}
	return w
}

func checkRelay(ctx context.Context, c *controlclient.Client, info api.Info) Relay {
	if !info.Relay {
		return Relay{}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	auth, err := c.ProbeRelay(ctx)
	if err != nil {
		return Relay{Offered: true, Err: err.Error()}
	}
	return Relay{Offered: true, Reachable: true, Authenticated: auth}
}

// stunSet is the service's STUN responders per family, the primary first.
type stunSet struct{ v4, v6 []netip.AddrPort }

// stunServers resolves the STUN addresses of info: a host that is empty
// or unspecified is the service URL's host, resolved to one address of
// each family.
func stunServers(ctx context.Context, serviceURL string, info api.Info) (stunSet, error) {
	u, err := url.Parse(serviceURL)
	if err != nil {
		return stunSet{}, fmt.Errorf("service URL: %w", err)
	}
	var s stunSet
	for _, a := range []string{info.STUNAddr, info.STUNAltAddr} {
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return stunSet{}, fmt.Errorf("STUN address %q: %w", a, err)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return stunSet{}, fmt.Errorf("STUN address %q: bad port", a)
		}
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
			host = u.Hostname()
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return stunSet{}, fmt.Errorf("STUN host %q: %w", host, err)
		}
		var got4, got6 bool
		for _, ip := range ips {
			ip = ip.Unmap()
			switch {
			case ip.Is4() && !got4:
				s.v4, got4 = append(s.v4, netip.AddrPortFrom(ip, uint16(p))), true
			case ip.Is6() && !got6:
				s.v6, got6 = append(s.v6, netip.AddrPortFrom(ip, uint16(p))), true
			}
		}
	}
	return s, nil
}

// checkFamily asks every server from one socket of network ("udp4",
// "udp6"), resending unanswered requests, until all answered or timeout.
func checkFamily(ctx context.Context, network string, servers []netip.AddrPort, timeout time.Duration) Family {
	if len(servers) == 0 {
		return Family{Err: "the service has no STUN address of this family"}
	}
	f := Family{Probes: make([]Probe, len(servers))}
	for i, s := range servers {
		f.Probes[i].Server = s
	}
	pc, err := net.ListenUDP(network, nil)
	if err != nil {
		f.Err = fmt.Sprintf("no %s socket: %v", network, err)
		return f
	}
	defer pc.Close()
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Now()) })
	defer stop()
	local := pc.LocalAddr().(*net.UDPAddr).AddrPort()

	type sent struct {
		server int
		at     time.Time
	}
	pending := map[[12]byte]sent{}
	send := func(i int) error {
		tx, raw := magicsock.NewBindingRequest()
		pending[tx] = sent{i, time.Now()}
		_, err := pc.WriteToUDPAddrPort(raw, servers[i])
		return err
	}
	var sendErr error
	sentAny := false
	for i := range servers {
		if err := send(i); err != nil {
			sendErr = err
		} else {
			sentAny = true
		}
	}
	if !sentAny {
		// No route (no IPv6 here): not checked.
		f.Err = fmt.Sprintf("cannot send to %s: %v", servers[0], sendErr)
		return f
	}
	f.Checked = true
	deadline := time.Now().Add(timeout)
	nextResend := time.Now().Add(retransmitEvery)
	buf := make([]byte, 1500)
	answered := 0
	for answered < len(servers) && ctx.Err() == nil {
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if !now.Before(nextResend) {
			for i := range servers {
				if !f.Probes[i].Mapped.IsValid() {
					_ = send(i)
				}
			}
			nextResend = now.Add(retransmitEvery)
		}
		pc.SetReadDeadline(minTime(deadline, nextResend))
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			continue // deadline: resend or give up above
		}
		tx, mapped, ok := magicsock.ParseBindingSuccess(buf[:n])
		if !ok {
			continue
		}
		s, ok := pending[tx]
		if !ok || unmap(from) != unmap(servers[s.server]) || f.Probes[s.server].Mapped.IsValid() {
			continue
		}
		f.Probes[s.server].Mapped = mapped
		f.Probes[s.server].Latency = time.Since(s.at)
		answered++
	}
	for _, p := range f.Probes {
		if !p.Mapped.IsValid() {
			continue
		}
		if !f.Mapped.IsValid() {
			f.Mapped = p.Mapped
		}
		if f.Latency == 0 || p.Latency < f.Latency {
			f.Latency = p.Latency
		}
	}
	f.NAT = classify(f.Probes, local, towardLocal(network, servers[0]))
	if !f.Mapped.IsValid() {
		f.Err = fmt.Sprintf("no answer in %s", timeout)
	}
	return f
}

// classify names the mapping the probes saw; local is the socket's
// address, own the local address the host uses towards the service.
func classify(probes []Probe, local netip.AddrPort, own netip.Addr) api.NATType {
	var got []netip.AddrPort
	for _, p := range probes {
		if p.Mapped.IsValid() {
			got = append(got, unmap(p.Mapped))
		}
	}
	switch {
	case len(got) == 0:
		return NATUnknown
	case len(got) >= 2 && got[0] != got[1]:
		return NATSymmetric
	case got[0].Port() == local.Port() && (got[0].Addr() == own || slices.Contains(magicsock.InterfaceAddrs(), got[0].Addr())):
		return NATNone
	case len(got) >= 2:
		return NATEndpointIndependent
	}
	return NATUnknown
}

// towardLocal is the local address the kernel picks to send to s (no
// packet is sent); invalid when there is no route.
func towardLocal(network string, s netip.AddrPort) netip.Addr {
	conn, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(s))
	if err != nil {
		return netip.Addr{}
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// redact drops the token fragment of a service URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}
