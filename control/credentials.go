package control

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// Names of the service's secrets in a store that keeps them
// (store.SecretStore), shared by the replicas of one service.
const (
	secretServerKey  = "server_key"      // X25519 private key, base64
	secretAdminToken = "admin_token"     // the admin token
	secretTLS        = "tls_self_signed" // self-signed certificate and key, PEM
)

// credentials are the service's own key, admin token and TLS material.
type credentials struct {
	key   api.Key
	admin string
	tls   *tls.Config // nil with InsecureHTTP
	fp    []byte      // SHA-256 of the certificate; nil with InsecureHTTP
}

// loadCredentials returns the service's static key, admin token and TLS
// certificate, each created on first start. A store that keeps secrets
// (PostgreSQL) holds them, so that every replica serves with the same
// ones; otherwise they are files in o.DataDir. o.AdminToken and
// o.TLSCertFile/TLSKeyFile take precedence either way.
func loadCredentials(ctx context.Context, o Options, st store.Store, log *slog.Logger) (credentials, error) {
	ss, shared := st.(store.SecretStore)
	var (
		c   credentials
		err error
	)
	if shared {
		c.key, err = sharedServerKey(ctx, ss)
	} else {
		c.key, err = loadOrCreateServerKey(o.DataDir)
	}
	if err != nil {
		return c, err
	}
	switch c.admin = o.AdminToken; {
	case c.admin != "":
	case shared:
		c.admin, err = sharedAdminToken(ctx, ss, o.DataDir)
	default:
		c.admin, err = loadOrCreateAdminToken(o.DataDir)
	}
	if err != nil || o.InsecureHTTP {
		return c, err
	}
	var cert tls.Certificate
	switch {
	case o.TLSCertFile != "":
		cert, c.fp, err = loadKeyPair(o.TLSCertFile, o.TLSKeyFile)
	case shared:
		cert, c.fp, err = sharedSelfSigned(ctx, ss, o.DataDir, o.TLSHosts)
	default:
		var missing []string
		cert, c.fp, missing, err = loadOrCreateSelfSigned(o.DataDir, o.TLSHosts)
		if len(missing) > 0 {
			log.Warn("the existing self-signed certificate does not cover some names; members pin its fingerprint, so it is kept",
				"cert", filepath.Join(o.DataDir, TLSCertFile), "missing", missing)
		}
	}
	if err != nil {
		return c, err
	}
	c.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	return c, nil
}

func sharedServerKey(ctx context.Context, ss store.SecretStore) (api.Key, error) {
	b, err := ss.Secret(ctx, secretServerKey, func() ([]byte, error) {
		return []byte(newServerKey().String()), nil
	})
	if err != nil {
		return api.Key{}, fmt.Errorf("server key: %w", err)
	}
	k, err := api.ParseKey(strings.TrimSpace(string(b)))
	if err != nil || k.IsZero() {
		return api.Key{}, fmt.Errorf("server key %q in the database is corrupt", secretServerKey)
	}
	return k, nil
}

// sharedAdminToken returns the admin token kept in the store and leaves a
// copy in dir (if set) for the admin commands run on this machine.
func sharedAdminToken(ctx context.Context, ss store.SecretStore, dir string) (string, error) {
	b, err := ss.Secret(ctx, secretAdminToken, func() ([]byte, error) {
		t, err := randomToken("wma_")
		return []byte(t), err
	})
	if err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" || strings.ContainsAny(t, " \t\r\n") {
		return "", fmt.Errorf("admin token %q in the database is empty or corrupt", secretAdminToken)
	}
	if err := mirrorFile(dir, AdminTokenFile, []byte(t+"\n"), 0o600); err != nil {
		return "", err
	}
	return t, nil
}

// sharedSelfSigned returns the self-signed certificate kept in the store,
// created by the first replica to start, and leaves a copy of the
// certificate (not its key) in dir, if set, for the admin commands.
func sharedSelfSigned(ctx context.Context, ss store.SecretStore, dir string, hosts []string) (tls.Certificate, []byte, error) {
	b, err := ss.Secret(ctx, secretTLS, func() ([]byte, error) {
		certPEM, keyPEM, err := newSelfSigned(sans(hosts))
		return append(certPEM, keyPEM...), err
	})
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS certificate: %w", err)
	}
	// X509KeyPair takes the CERTIFICATE blocks of its first argument and
	// the key block of its second.
	cert, err := tls.X509KeyPair(b, b)
	if err != nil || len(cert.Certificate) == 0 {
		return tls.Certificate{}, nil, fmt.Errorf("TLS certificate %q in the database is corrupt: %v", secretTLS, err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if err := mirrorFile(dir, TLSCertFile, certPEM, 0o644); err != nil {
		return tls.Certificate{}, nil, err
	}
	return cert, tlspin.Fingerprint(cert.Certificate[0]), nil
}

// mirrorFile makes dir/name hold data (replacing it atomically if it
// differs). Nothing to do when dir is "".
func mirrorFile(dir, name string, data []byte, perm os.FileMode) error {
	if dir == "" {
		return nil
	}
	path := filepath.Join(dir, name)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("copy of %s: %w", name, err)
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := writeFileExcl(tmp, data, perm); err != nil {
		return fmt.Errorf("copy of %s: %w", name, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy of %s: %w", name, err)
	}
	return nil
}
