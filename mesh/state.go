package mesh

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

const (
	keyFileName   = "private.key"
	stateFileName = "state.json"
	stateVersion  = 1
)

// savedState is what a node keeps in its state directory between runs.
type savedState struct {
	Version     int    `json:"version"`
	URL         string `json:"url"`
	DeviceID    string `json:"device_id"`
	DeviceToken string `json:"device_token"`
	// DeviceTokenExpires is when DeviceToken expires (zero: never or
	// unknown); the node rotates it before.
	DeviceTokenExpires time.Time `json:"device_token_expires,omitzero"`
	// Fingerprint is the service certificate's SHA-256 from the join
	// token (nil: none), so that Forget can pin it without the token.
	Fingerprint   []byte           `json:"fingerprint,omitempty"`
	Zone          string           `json:"zone"`
	Hostname      string           `json:"hostname"`
	IPv4          netip.Addr       `json:"ipv4"`
	IPv6          netip.Addr       `json:"ipv6"`
	ZoneIPv4      netip.Prefix     `json:"zone_ipv4"`
	ZoneIPv6      netip.Prefix     `json:"zone_ipv6"`
	ChildPrefixes []netip.Prefix   `json:"child_prefixes"`
	Endpoints     []netip.AddrPort `json:"endpoints"`
	ListenPort    uint16           `json:"listen_port"`
	Peers         []api.Peer       `json:"peers"`
	Revision      int64            `json:"revision"`
	// Filter is the last inbound filter from the service (nil: none,
	// accept everything), enforced again by a restarted node until the
	// service sends another.
	Filter *api.Filter `json:"filter,omitempty"`
}

// registered reports whether s holds a usable registration for url.
func (s *savedState) registered(url string) bool {
	return s != nil && s.URL == url && s.DeviceToken != "" && s.IPv4.IsValid() && s.ZoneIPv4.IsValid()
}

// stateDir is a node's state directory ("" = ephemeral, nothing on disk).
type stateDir string

// loadKey returns the private key in the directory, creating it (0600) on
// first use. An ephemeral directory gets a fresh key every time.
func (d stateDir) loadKey() (api.Key, error) {
	if d == "" {
		return newPrivateKey()
	}
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return api.Key{}, fmt.Errorf("state dir %q: %w", string(d), err)
	}
	path := filepath.Join(string(d), keyFileName)
	b, err := os.ReadFile(path)
	if err == nil {
		k, perr := api.ParseKey(strings.TrimSpace(string(b)))
		if perr != nil {
			return api.Key{}, fmt.Errorf("private key file %q is corrupt (restore it, or remove the state directory to join as a new member): %w: %w", path, ErrIdentityLost, perr)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return api.Key{}, fmt.Errorf("private key file %q: %w", path, err)
	}
	if _, err := os.Stat(filepath.Join(string(d), stateFileName)); err == nil {
		// A registration without its key: making a new key would silently
		// become another member.
		return api.Key{}, fmt.Errorf("state dir %q: %w: %s is missing but %s is there (restore the key, or remove the directory to join as a new member)",
			string(d), ErrIdentityLost, keyFileName, stateFileName)
	}
	k, err := newPrivateKey()
	if err != nil {
		return api.Key{}, err
	}
	// O_EXCL: never overwrite a key another process just wrote.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return api.Key{}, fmt.Errorf("private key file %q: %w", path, err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return api.Key{}, fmt.Errorf("private key file %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return api.Key{}, fmt.Errorf("private key file %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return api.Key{}, fmt.Errorf("private key file %q: %w", path, err)
	}
	return k, nil
}

// load reads state.json; (nil, nil) when there is none. A file that exists
// but does not parse is an error: it is never silently replaced.
func (d stateDir) load() (*savedState, error) {
	if d == "" {
		return nil, nil
	}
	path := filepath.Join(string(d), stateFileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file %q: %w", path, err)
	}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("state file %q is corrupt (fix or remove it): %w", path, err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("state file %q: version %d, want %d", path, s.Version, stateVersion)
	}
	return &s, nil
}

// save writes state.json atomically (temp file, fsync, rename).
func (d stateDir) save(s *savedState) error {
	if d == "" {
		return nil
	}
	s.Version = stateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	path := filepath.Join(string(d), stateFileName)
	f, err := os.CreateTemp(string(d), stateFileName+".tmp*")
	if err != nil {
		return fmt.Errorf("state file %q: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("state file %q: %w", path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state file %q: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("state file %q: %w", path, err)
	}
	return nil
}

// newPrivateKey returns a clamped Curve25519 private key.
func newPrivateKey() (api.Key, error) {
	var k api.Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("private key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}
