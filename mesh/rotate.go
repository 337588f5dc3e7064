package mesh

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/wiremesh/wiremesh/control/api"
)

// keyPair is the node's WireGuard key; RotateKey replaces it whole.
type keyPair struct{ priv, pub api.Key }

// keys returns the node's current key pair.
func (n *Node) keys() keyPair { return *n.key.Load() }

// keySetter is implemented by data planes whose WireGuard device can take
// a new private key while running (both planes: see wgDevice).
type keySetter interface{ setPrivateKey(api.Key) error }

func (p *userspacePlane) setPrivateKey(k api.Key) error { return p.dev.setPrivateKey(k) }

// RotateKey replaces the node's WireGuard key: the service is asked with a
// request signed by the old and the new key, the node keeps its device,
// addresses, prefixes and tokens, and its peers switch to the new key when
// the service tells them (moments). The old key is refused by the service
// from then on. With a state directory the new key is written there
// (private.key) before the node uses it.
func (n *Node) RotateKey(ctx context.Context) error {
	fail := func(err error) error { return wrapService("mesh: rotate key", err) }
	n.rotateMu.Lock()
	defer n.rotateMu.Unlock()
	ks, ok := n.plane.(keySetter)
	if !ok {
		return fail(errors.New("the data plane cannot change its key while running"))
	}
	old := n.keys()
	next, err := newPrivateKey()
	if err != nil {
		return fail(err)
	}
	pending, err := n.state.stageKey(next)
	if err != nil {
		return fail(err)
	}
	n.mu.Lock()
	id := n.self.deviceID
	n.mu.Unlock()
	_, err = n.client.RotateKey(ctx, id, old.priv, next)
	var ae *api.Error
	if err != nil && !errors.As(err, &ae) {
		// The answer may be lost after the service took the new key.
		if d, serr := n.client.Self(ctx); serr == nil && d.PublicKey == api.PublicKey(next) {
			err = nil
		}
	}
	if err != nil {
		os.Remove(pending)
		return fail(err)
	}
	if err := n.state.commitKey(pending); err != nil {
		n.log.Error("mesh: the service has the new key but saving it failed; the node keeps running with it, but a restart will not find it", "err", err)
	}
	n.key.Store(&keyPair{priv: next, pub: api.PublicKey(next)})
	if err := ks.setPrivateKey(next); err != nil {
		return fail(err)
	}
	n.log.Info("mesh: key rotated", "old", old.pub, "new", api.PublicKey(next))
	return nil
}

// stageKey writes k next to the key file (0600, fsynced) and returns its
// path; "" for a node without a state directory.
func (d stateDir) stageKey(k api.Key) (string, error) {
	if d == "" {
		return "", nil
	}
	path := filepath.Join(string(d), keyFileName+".new")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("new key file: %w", err)
	}
	_, err = f.WriteString(k.String() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("new key file %q: %w", path, err)
	}
	return path, nil
}

// commitKey makes a staged key the key file.
func (d stateDir) commitKey(pending string) error {
	if d == "" {
		return nil
	}
	return os.Rename(pending, filepath.Join(string(d), keyFileName))
}

// setPrivateKey gives the running device a new private key; sessions are
// re-established with it as peers learn the new public key. The bind signs
// its path probes with it too, and repairDrift keeps it (not the old one).
func (d *wgDevice) setPrivateKey(k api.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return net.ErrClosed
	}
	if err := d.dev.IpcSet("private_key=" + hex.EncodeToString(k[:]) + "\n"); err != nil {
		return err
	}
	d.priv, d.pub = k, api.PublicKey(k)
	if d.ms != nil {
		d.ms.SetPrivateKey(k)
	}
	return nil
}

// isSelf reports whether p is the node itself: its key, or its device id
// (the service may still, or already, show it under the other key while a
// rotation is under way).
func (n *Node) isSelf(p api.Peer) bool {
	if p.PublicKey == n.keys().pub {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return p.ID != "" && p.ID == n.self.deviceID
}
