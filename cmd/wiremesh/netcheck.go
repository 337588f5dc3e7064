package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
	"github.com/wiremesh/wiremesh/mesh/netcheck"
)

const netcheckUsage = `usage: wiremesh netcheck [flags] URL

Reports what this machine's network allows a member of the mesh served at
URL, without joining: whether UDP reaches the service's STUN ports (IPv4,
IPv6), the public address and port they see, whether that mapping varies by
destination (a symmetric NAT: peers cannot reach it, the relay carries the
traffic), the latency to the service over STUN and HTTPS, whether the relay
answers, and the local addresses a member would advertise. The service's
certificate is trusted as when joining: through the join token (--token or
$WIREMESH_TOKEN), --tls-fingerprint, or the service's --data-dir on the same
machine. --json prints the report in the format of docs/NETCHECK-JSON.md.

flags:
`

// runNetcheck implements `wiremesh netcheck`.
func runNetcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("netcheck", stderr, "netcheck [flags] URL")
	flags.Usage = func() {
		fmt.Fprint(stderr, netcheckUsage)
		flags.SetOutput(stderr)
		flags.PrintDefaults()
		flags.SetOutput(io.Discard)
	}
	token := flags.String("token", "", "a join token of the service: pins its certificate, nothing is registered (default $WIREMESH_TOKEN)")
	fingerprint := flags.String("tls-fingerprint", "", "pin the service certificate by its SHA-256 (hex), as printed by `wiremesh serve`")
	dataDir := flags.String("data-dir", defaultDataDir(), "the service's data directory when on the same machine: its certificate is trusted")
	insecure := flags.Bool("insecure-http", false, "allow a plain http:// service URL on a non-loopback host")
	asJSON := flags.Bool("json", false, "print the report as JSON (docs/NETCHECK-JSON.md)")
	timeout := netcheck.DefaultUDPTimeout
	flags.Var(durationFlag{&timeout}, "timeout", "how long to wait for STUN answers (default 3s)")
	pos, err := parseFlags(flags, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		flags.Usage()
		return usageErr("netcheck: want the service URL (e.g. https://HOST:8443), got %d arguments", len(pos))
	}
	url := pos[0]
	if err := checkServiceURL("netcheck: service URL", url); err != nil {
		return err
	}
	cfg := netcheck.Config{URL: url, Token: *token, InsecureHTTP: *insecure, UDPTimeout: timeout}
	if cfg.Token == "" {
		cfg.Token = os.Getenv("WIREMESH_TOKEN")
	}
	switch {
	case *fingerprint != "":
		fp, err := tlspin.Parse(*fingerprint)
		if err != nil {
			return usageErr("netcheck: --tls-fingerprint: %v", err)
		}
		cfg.Fingerprint = fp
	case cfg.Token == "" && !strings.Contains(url, "#") && strings.HasPrefix(url, "https://") && *dataDir != "":
		fp, err := tlspin.FromCertFile(filepath.Join(*dataDir, control.TLSCertFile))
		if err == nil {
			cfg.Fingerprint = fp
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("netcheck: trusting the service certificate: %w", err)
		}
	}
	r, err := netcheck.Run(ctx, cfg)
	if err != nil {
		return netcheckError(url, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(toNetcheckJSON(r))
	}
	printNetcheck(stdout, r)
	return nil
}

// netcheckError turns a failed check into a message a person can act on.
func netcheckError(url string, err error) error {
	if https, ok := speaksHTTPS(url, err); ok {
		return fmt.Errorf("netcheck: the service at %s speaks HTTPS: use %s", url, https)
	}
	var ne net.Error
	switch {
	case errors.As(err, new(*tlspin.MismatchError)):
		return fmt.Errorf("netcheck: the service at %s presents a certificate that is not the one pinned by the token or --tls-fingerprint "+
			"(a token from another service, or the service's certificate was replaced)", url)
	case errors.As(err, new(x509.UnknownAuthorityError)), errors.As(err, new(*tls.CertificateVerificationError)), errors.As(err, new(x509.HostnameError)):
		return fmt.Errorf("netcheck: the service at %s presents a certificate this machine does not trust: "+
			"pass --token (a join token pins it), --tls-fingerprint, or the service's --data-dir (%w)", url, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("netcheck: interrupted: %w", err)
	case errors.As(err, &ne), strings.Contains(err.Error(), "connect"):
		return fmt.Errorf("netcheck: cannot reach the service at %s: is `wiremesh serve` running there? (%w)", url, err)
	}
	return fmt.Errorf("netcheck %s: %w", url, err)
}

// printNetcheck prints the report as a table, then its warnings.
func printNetcheck(w io.Writer, r *netcheck.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "service\t%s (version %s)\n", r.Service, r.ServiceVersion)
	fmt.Fprintf(tw, "UDP\t%s\n", yesNo(r.UDP))
	fmt.Fprintf(tw, "IPv4\t%s\n", familyLine(r.IPv4))
	fmt.Fprintf(tw, "IPv6\t%s\n", familyLine(r.IPv6))
	fmt.Fprintf(tw, "mapping\t%s\n", mappingLine(r.NAT))
	fmt.Fprintf(tw, "HTTPS latency\t%s\n", ms(r.HTTPSLatency))
	fmt.Fprintf(tw, "relay\t%s\n", relayLine(r.Relay))
	local := "none"
	if len(r.LocalAddrs) > 0 {
		local = joinAddrs(r.LocalAddrs)
	}
	fmt.Fprintf(tw, "local addresses\t%s\n", local)
	tw.Flush()
	for _, m := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", m)
	}
}

func familyLine(f netcheck.Family) string {
	switch {
	case !f.Checked:
		return "not checked: " + f.Err
	case !f.Mapped.IsValid():
		return fmt.Sprintf("no answer from %s (%s)", f.Probes[0].Server, f.Err)
	}
	s := fmt.Sprintf("public address %s, STUN latency %s", f.Mapped, ms(f.Latency))
	var seen []string
	for _, p := range f.Probes {
		if p.Mapped.IsValid() {
			seen = append(seen, fmt.Sprintf("%s saw %s", p.Server, p.Mapped))
		} else {
			seen = append(seen, fmt.Sprintf("%s: no answer", p.Server))
		}
	}
	return s + " (" + strings.Join(seen, ", ") + ")"
}

func mappingLine(nat api.NATType) string {
	switch nat {
	case netcheck.NATNone:
		return "no NAT: the public address is this machine's own"
	case netcheck.NATEndpointIndependent:
		return "endpoint-independent: the same public port for every destination (peers can reach it by hole punching)"
	case netcheck.NATSymmetric:
		return "varies by destination (symmetric NAT): peers cannot reach the public port; the relay is used unless the peer is reachable"
	}
	return "unknown (fewer than two STUN answers)"
}

func relayLine(r netcheck.Relay) string {
	switch {
	case !r.Offered:
		return "the service runs none"
	case !r.Reachable:
		return "unreachable: " + r.Err
	case r.Authenticated:
		return "reachable (WebSocket opened)"
	}
	return "reachable (it refused the WebSocket for want of a device token, as expected without joining)"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// The format of `wiremesh netcheck --json`, documented in
// docs/NETCHECK-JSON.md; stable as statusJSON is.

const netcheckJSONVersion = 1

type netcheckJSON struct {
	FormatVersion  int          `json:"format_version"`
	Service        string       `json:"service"`
	ServiceVersion string       `json:"service_version"`
	UDP            bool         `json:"udp"`
	IPv4           familyJSON   `json:"ipv4"`
	IPv6           familyJSON   `json:"ipv6"`
	NAT            *string      `json:"nat"`
	MappingVaries  *bool        `json:"mapping_varies"`
	HTTPSRTTMs     float64      `json:"https_rtt_ms"`
	Relay          relayJSON    `json:"relay"`
	LocalAddrs     []netip.Addr `json:"local_addrs"`
	Warnings       []string     `json:"warnings"`
}

type familyJSON struct {
	Checked   bool            `json:"checked"`
	Public    *netip.AddrPort `json:"public"`
	STUNRTTMs *float64        `json:"stun_rtt_ms"`
	NAT       *string         `json:"nat"`
	Probes    []stunProbeJSON `json:"probes"`
	Error     *string         `json:"error"`
}

type stunProbeJSON struct {
	Server netip.AddrPort  `json:"server"`
	Public *netip.AddrPort `json:"public"`
	RTTMs  *float64        `json:"rtt_ms"`
}

type relayJSON struct {
	Offered       bool    `json:"offered"`
	Reachable     bool    `json:"reachable"`
	Authenticated bool    `json:"authenticated"`
	Error         *string `json:"error"`
}

func toNetcheckJSON(r *netcheck.Report) netcheckJSON {
	out := netcheckJSON{
		FormatVersion:  netcheckJSONVersion,
		Service:        r.Service,
		ServiceVersion: r.ServiceVersion,
		UDP:            r.UDP,
		IPv4:           toFamilyJSON(r.IPv4),
		IPv6:           toFamilyJSON(r.IPv6),
		NAT:            natPtr(r.NAT),
		HTTPSRTTMs:     msFloat(r.HTTPSLatency),
		Relay: relayJSON{Offered: r.Relay.Offered, Reachable: r.Relay.Reachable,
			Authenticated: r.Relay.Authenticated, Error: strPtr(r.Relay.Err)},
		LocalAddrs: orEmpty(r.LocalAddrs),
		Warnings:   orEmpty(r.Warnings),
	}
	switch r.NAT {
	case netcheck.NATSymmetric:
		out.MappingVaries = new(true)
	case netcheck.NATEndpointIndependent, netcheck.NATNone:
		out.MappingVaries = new(false)
	}
	return out
}

func toFamilyJSON(f netcheck.Family) familyJSON {
	out := familyJSON{Checked: f.Checked, NAT: natPtr(f.NAT), Error: strPtr(f.Err), Probes: []stunProbeJSON{}}
	if f.Mapped.IsValid() {
		out.Public = new(f.Mapped)
		out.STUNRTTMs = new(msFloat(f.Latency))
		out.Error = nil
	}
	for _, p := range f.Probes {
		pj := stunProbeJSON{Server: p.Server}
		if p.Mapped.IsValid() {
			pj.Public = new(p.Mapped)
			pj.RTTMs = new(msFloat(p.Latency))
		}
		out.Probes = append(out.Probes, pj)
	}
	return out
}

func natPtr(n api.NATType) *string { return strPtr(string(n)) }

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// msFloat is d in milliseconds, to the microsecond.
func msFloat(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
