package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// internalPrefix matches the operation names that libraries put in front
// of their errors ("control.Start: ", "mesh.Join: ", "controlclient: info: "):
// useful in logs, noise for a person reading the command's message.
var internalPrefix = regexp.MustCompile(`\b(?:[a-z][a-z0-9]*\.)+[A-Z][A-Za-z0-9]*(?:\.[A-Z][A-Za-z0-9]*)*: |\b(?:controlclient|adminclient)(?:: [a-z]+)?: `)

// plainMessage is err's message without internal call chains.
func plainMessage(err error) string {
	return internalPrefix.ReplaceAllString(err.Error(), "")
}

// checkServiceURL explains a service URL that cannot work: no scheme
// ("127.0.0.1:8443"), or a scheme other than http(s). what names the flag
// or argument.
func checkServiceURL(what, s string) error {
	if !strings.Contains(s, "://") {
		return usageErr("%s %q: the URL needs a scheme: did you mean https://%s?", what, s, s)
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return usageErr("%s %q: want https://HOST:PORT (the address `wiremesh serve` prints)", what, s)
	}
	return nil
}

// looksLikeHostPort reports whether s looks like "host:port" or an IP
// address: a service URL that lost its scheme, not a command name.
func looksLikeHostPort(s string) bool {
	if _, port, err := net.SplitHostPort(s); err == nil && port != "" {
		return true
	}
	return net.ParseIP(s) != nil
}

// speaksHTTPS reports whether err is Go's answer to plain HTTP sent to a
// TLS listener ("400 Bad Request: Client sent an HTTP request to an HTTPS
// server"), and returns the https:// URL to use instead.
func speaksHTTPS(serviceURL string, err error) (string, bool) {
	if err == nil || !strings.Contains(err.Error(), "Client sent an HTTP request to an HTTPS server") {
		return "", false
	}
	return "https://" + strings.TrimPrefix(serviceURL, "http://"), true
}

// adminError turns an admin call's failure into a message a person can act
// on: certificate trust, HTTPS, reachability. op is the command ("zone
// list"), server the --server URL.
func adminError(op, server string, err error) error {
	var ae *api.Error
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var verifyErr *tls.CertificateVerificationError
	if https, ok := speaksHTTPS(server, err); ok {
		return fmt.Errorf("%s: the service at %s speaks HTTPS: use --server %s", op, server, https)
	}
	switch {
	case errors.As(err, &ae):
		return fmt.Errorf("%s: %w", op, err)
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &verifyErr):
		return fmt.Errorf("%s: the service at %s presents a certificate this machine does not trust: "+
			"pass --tls-fingerprint (the \"certificate SHA-256\" printed by `wiremesh serve`) or the service's --data-dir (%v)", op, server, err)
	case errors.As(err, new(*tlspin.MismatchError)):
		return fmt.Errorf("%s: the service at %s is not the one pinned by --tls-fingerprint or --data-dir (its certificate differs): %v", op, server, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s: cannot reach the service at %s: is `wiremesh serve` running there? (%v)", op, server, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// checkListen explains a listen address that cannot work ("18443" for
// ":18443").
func checkListen(flag, s string) error {
	if _, err := strconv.ParseUint(s, 10, 16); err == nil {
		return usageErr("%s %q: did you mean :%s? (HOST:PORT, or :PORT for every interface)", flag, s, s)
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return usageErr("%s %q: want HOST:PORT, or :PORT for every interface", flag, s)
	}
	return nil
}

// durationFlag is a time.Duration flag whose error says what to write.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil || *f.d == 0 {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return fmt.Errorf("want a duration such as 24h or 30m (a number needs a unit: %sh?)", s)
		}
		return errors.New("want a duration such as 24h or 30m")
	}
	*f.d = d
	return nil
}
