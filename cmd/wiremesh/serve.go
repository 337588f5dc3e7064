package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/control"
	"github.com/wiremesh/wiremesh/control/api"
)

// defaultDataDir is where `wiremesh serve` keeps its state, and where the
// admin commands look for the admin token and certificate:
// $WIREMESH_DATA_DIR, else $XDG_STATE_HOME/wiremesh, else
// ~/.local/state/wiremesh.
func defaultDataDir() string {
	if d := os.Getenv("WIREMESH_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "wiremesh")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "wiremesh")
	}
	return "wiremesh-data"
}

// serveJoinTokenTTL is the lifetime of the reusable join token printed at
// start-up.
const serveJoinTokenTTL = 24 * time.Hour

// runServe implements `wiremesh serve`.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr, "serve [flags]")
	dataDir := fs.String("data-dir", defaultDataDir(), "state directory: database, keys, admin token, self-signed certificate (env WIREMESH_DATA_DIR)")
	storeDSN := fs.String("store", os.Getenv("WIREMESH_STORE"), "database: empty for SQLite in the data dir, or a postgres://user:password@host/db URL shared by several replicas (env WIREMESH_STORE)")
	listen := fs.String("listen", ":8443", "API listen address (TCP)")
	stunListen := fs.String("stun-listen", ":3478", `STUN listen address (UDP); "off" disables STUN`)
	stunAltListen := fs.String("stun-alt-listen", "", `second STUN listen address (UDP), for telling symmetric NATs apart; default: the next port; "off" disables it`)
	tlsCert := fs.String("tls-cert", "", "TLS certificate file (PEM); default: a self-signed certificate kept in the data dir")
	tlsKey := fs.String("tls-key", "", "TLS key file (PEM), with --tls-cert")
	insecure := fs.Bool("insecure-http", false, "serve plain HTTP (behind a TLS-terminating proxy, or for tests)")
	var hosts stringList
	fs.Var(&hosts, "tls-host", "extra name or address for the self-signed certificate (repeatable; only when it is first created)")
	var proxies stringList
	fs.Var(&proxies, "trusted-proxy", "address or CIDR of a reverse proxy whose X-Forwarded-For names the client, for rate limits and the audit log (repeatable; default: trust none)")
	verbose := fs.Bool("v", false, "debug logs")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("serve: unexpected arguments %q", pos)
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageErr("serve: --tls-cert and --tls-key go together")
	}
	if *insecure && *tlsCert != "" {
		return usageErr("serve: --insecure-http and --tls-cert are mutually exclusive")
	}
	trusted, err := parseProxies(proxies)
	if err != nil {
		return usageErr("serve: %v", err)
	}
	if err := checkListen("serve: --listen", *listen); err != nil {
		return err
	}
	if *stunListen != "off" {
		if err := checkListen("serve: --stun-listen", *stunListen); err != nil {
			return err
		}
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	adminEnv := os.Getenv("WIREMESH_ADMIN_TOKEN")
	svc, err := control.Start(ctx, control.Options{
		DataDir:        *dataDir,
		Store:          *storeDSN,
		Listen:         *listen,
		STUNListen:     *stunListen,
		STUNAltListen:  *stunAltListen,
		TLSCertFile:    *tlsCert,
		TLSKeyFile:     *tlsKey,
		TLSHosts:       hosts,
		InsecureHTTP:   *insecure,
		AdminToken:     adminEnv,
		Logger:         log,
		TrustedProxies: trusted,
		Version:        readBuildInfo().short(),
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("serve: cannot listen on %s (TCP) or %s (UDP, STUN): the address is in use, maybe by another `wiremesh serve`: "+
			"stop it or choose another --listen / --stun-listen (%s)", *listen, *stunListen, plainMessage(err))
	}
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	tok, err := svc.CreateJoinToken(ctx, api.DefaultZone, true, serveJoinTokenTTL)
	if err != nil {
		svc.Close()
		return fmt.Errorf("serve: creating a join token: %w", err)
	}

	printBanner(stdout, svc, *dataDir, *storeDSN != "", adminEnv != "", tok)

	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	if err := svc.Close(); err != nil {
		return fmt.Errorf("serve: stopping: %w", err)
	}
	return nil
}

// joinURL is the URL other machines use: the listen address, or when it is
// unspecified this machine's first global unicast IPv4 address (the URL's
// host is not what members trust: they pin the certificate fingerprint).
func joinURL(svc *control.Service) string {
	scheme := "https"
	if svc.Fingerprint() == nil {
		scheme = "http"
	}
	a := svc.Addr()
	if !a.Addr().IsUnspecified() {
		return svc.URL()
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return svc.URL()
	}
	for _, ia := range addrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if ok && ip.Unmap().Is4() && ip.IsGlobalUnicast() {
			return scheme + "://" + netip.AddrPortFrom(ip.Unmap(), a.Port()).String()
		}
	}
	return svc.URL()
}

// parseProxies parses --trusted-proxy values: a CIDR prefix or a single
// address.
func parseProxies(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range in {
		if p, err := netip.ParsePrefix(v); err == nil && p == p.Masked() {
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("--trusted-proxy %q: want an address or a CIDR prefix without host bits", v)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// printBanner prints what `wiremesh serve` tells a person at start-up.
func printBanner(stdout io.Writer, svc *control.Service, dataDir string, shared, adminFromEnv bool, tok string) {
	fmt.Fprintf(stdout, "wiremesh service listening on %s\n", svc.URL())
	if sa := svc.STUNAddr(); sa.IsValid() {
		fmt.Fprintf(stdout, "STUN responder on udp %s\n", sa)
		if alt := svc.STUNAltAddr(); alt.IsValid() {
			fmt.Fprintf(stdout, "second STUN responder on udp %s\n", alt)
		}
	}
	fmt.Fprintf(stdout, "data directory: %s\n", dataDir)
	if shared {
		fmt.Fprintf(stdout, "database: %s (shared by replicas; it keeps the service key, admin token and certificate)\n", svc.StoreName())
	}
	switch {
	case adminFromEnv:
		fmt.Fprintf(stdout, "admin token: from $WIREMESH_ADMIN_TOKEN\n")
	case shared:
		fmt.Fprintf(stdout, "admin token: kept in the database, copied to %s\n", filepath.Join(dataDir, control.AdminTokenFile))
	default:
		fmt.Fprintf(stdout, "admin token: kept in %s\n", filepath.Join(dataDir, control.AdminTokenFile))
	}
	if fp := svc.Fingerprint(); fp != nil {
		fmt.Fprintf(stdout, "certificate SHA-256: %s\n", hex.EncodeToString(fp))
	}
	if svc.AdminToken() != "" {
		fmt.Fprintf(stdout, "dashboard: %s/ui/ (sign in with the admin token)\n", svc.URL())
	}
	fmt.Fprintf(stdout, "\nJoin a machine to zone %q (token reusable for %s):\n\n  wiremesh join --token %s %s\n\n",
		api.DefaultZone, serveJoinTokenTTL, tok, joinURL(svc))
}
