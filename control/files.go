package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/internal/tlspin"
)

// Files kept in Options.DataDir.
const (
	DBFile         = "wiremesh.db"
	ServerKeyFile  = "server.key"
	AdminTokenFile = "admin.token"
	TLSCertFile    = "tls.crt"
	TLSKeyFile     = "tls.key"
)

// exists reports whether path exists; other stat errors are returned.
func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// writeFileExcl writes a new file with mode perm, refusing to replace one.
func writeFileExcl(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// loadOrCreateServerKey reads the service's X25519 key (base64, one line)
// or creates it (0600) on first start. A corrupt file is an error.
func loadOrCreateServerKey(dir string) (api.Key, error) {
	path := filepath.Join(dir, ServerKeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := api.ParseKey(strings.TrimSpace(string(b)))
		if err != nil || k.IsZero() {
			return api.Key{}, fmt.Errorf("server key %s is corrupt (want one line of base64, 32 bytes): remove it only if no member has joined yet", path)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return api.Key{}, fmt.Errorf("reading server key: %w", err)
	}
	k := newServerKey()
	if err := writeFileExcl(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return api.Key{}, fmt.Errorf("writing server key: %w", err)
	}
	return k, nil
}

// newServerKey returns a new X25519 private key, clamped.
func newServerKey() api.Key {
	var k api.Key
	rand.Read(k[:]) // never fails (crypto/rand, Go 1.24+)
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

// loadOrCreateAdminToken returns the admin token kept in dir, creating it
// (0600) on first start.
func loadOrCreateAdminToken(dir string) (string, error) {
	path := filepath.Join(dir, AdminTokenFile)
	b, err := os.ReadFile(path)
	if err == nil {
		t := strings.TrimSpace(string(b))
		if t == "" || strings.ContainsAny(t, " \t\r\n") {
			return "", fmt.Errorf("admin token file %s is empty or corrupt", path)
		}
		return t, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading admin token: %w", err)
	}
	t, err := randomToken("wma_")
	if err != nil {
		return "", err
	}
	if err := writeFileExcl(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("writing admin token: %w", err)
	}
	return t, nil
}

// loadKeyPair loads a certificate and key and returns them with the leaf
// fingerprint. Errors name the files.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, []byte, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	if len(cert.Certificate) == 0 {
		return tls.Certificate{}, nil, fmt.Errorf("TLS certificate %s holds no certificate", certFile)
	}
	return cert, tlspin.Fingerprint(cert.Certificate[0]), nil
}

// loadOrCreateSelfSigned returns the self-signed certificate kept in dir,
// creating it on first start. hosts are added to the default SANs
// (localhost, 127.0.0.1, ::1, the hostname). An existing certificate is
// reused as is (its fingerprint is in every token handed out); missing is
// reported in missing.
func loadOrCreateSelfSigned(dir string, hosts []string) (cert tls.Certificate, fp []byte, missing []string, err error) {
	certPath, keyPath := filepath.Join(dir, TLSCertFile), filepath.Join(dir, TLSKeyFile)
	haveCert, err := exists(certPath)
	if err != nil {
		return cert, nil, nil, err
	}
	haveKey, err := exists(keyPath)
	if err != nil {
		return cert, nil, nil, err
	}
	names := sans(hosts)
	switch {
	case haveCert && haveKey:
		cert, fp, err = loadKeyPair(certPath, keyPath)
		if err != nil {
			return cert, nil, nil, err
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return cert, nil, nil, fmt.Errorf("TLS certificate %s: %w", certPath, err)
		}
		for _, h := range names {
			if leaf.VerifyHostname(h) != nil {
				missing = append(missing, h)
			}
		}
		return cert, fp, missing, nil
	case haveCert != haveKey:
		return cert, nil, nil, fmt.Errorf("TLS files in %s: %s and %s must both exist or both be absent", dir, TLSCertFile, TLSKeyFile)
	}
	certPEM, keyPEM, err := newSelfSigned(names)
	if err != nil {
		return cert, nil, nil, err
	}
	if err := writeFileExcl(keyPath, keyPEM, 0o600); err != nil {
		return cert, nil, nil, fmt.Errorf("writing TLS key: %w", err)
	}
	if err := writeFileExcl(certPath, certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return cert, nil, nil, fmt.Errorf("writing TLS certificate: %w", err)
	}
	cert, fp, err = loadKeyPair(certPath, keyPath)
	return cert, fp, nil, err
}

// newSelfSigned creates a self-signed certificate (ECDSA P-256, 20 years)
// for names and returns it and its key in PEM.
func newSelfSigned(names []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wiremesh coordination service", Organization: []string{"wiremesh"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range names {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// sans returns the subject alternative names of a self-signed certificate.
func sans(extra []string) []string {
	names := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
	}
	for _, h := range extra {
		h = strings.TrimSpace(h)
		if h != "" && !slices.Contains(names, h) {
			names = append(names, h)
		}
	}
	return names
}
