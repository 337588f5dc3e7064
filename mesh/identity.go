package mesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/controlclient"
)

// WithEphemeral marks the node's device ephemeral: the service deletes it,
// freeing its address and prefixes, once it has stayed offline for the
// service's ephemeral timeout (10 minutes by default), and Close deletes it
// at once. It is the default without WithStateDir, where the key dies with
// the node anyway; with a state directory the device is durable unless
// this option is given.
func WithEphemeral() Option {
	return func(c *config) { c.ephemeral = true }
}

// Errors about the node's identity.
var (
	// ErrRevoked: the service revoked the node's key (`wiremesh device
	// delete --revoke`, or a key rotation retired it); it can never
	// register again. Join returns it; a running node stops talking to
	// the service.
	ErrRevoked error = &codeSentinel{api.CodeRevoked, "the node's key was revoked"}
	// ErrTokenExpired: the device token's lifetime ended and there was no
	// join token to register again.
	ErrTokenExpired error = &codeSentinel{api.CodeTokenExpired, "the device token expired"}
	// ErrIdentityLost: the state directory holds a registration but its
	// private key is missing or unreadable. Join never replaces it with a
	// new identity by itself.
	ErrIdentityLost = errors.New("the node's private key is missing or corrupt")
	// ErrStateDirInUse: another node (in this or another process) uses
	// the state directory.
	ErrStateDirInUse = errors.New("state directory in use by another node")
)

// leaveTimeout bounds the DELETE of an ephemeral device in Close.
const leaveTimeout = 5 * time.Second

// ephemeral reports whether the node's device is ephemeral.
func (n *Node) ephemeral() bool { return n.cfg.ephemeral || n.cfg.stateDir == "" }

// leave deletes the node's device at the service (an ephemeral node
// closing). Failures are logged: the service deletes it later anyway.
func (n *Node) leave() {
	if n.client.DeviceToken() == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	if err := n.client.DeleteSelf(ctx); err != nil {
		n.log.Warn("mesh: could not delete the ephemeral device at the service; it deletes it once it stays offline", "err", err)
		return
	}
	n.log.Info("mesh: ephemeral device deleted at the service")
}

// Leave deletes the node's device at the service for good, freeing its
// addresses and prefixes (what `wiremesh down` does), then closes the
// node. Its state directory then holds no usable registration.
func (n *Node) Leave(ctx context.Context) error {
	n.cancel() // no re-registration when the watch hears of the removal
	n.wg.Wait()
	err := n.client.DeleteSelf(ctx)
	if err == nil {
		n.client.SetDeviceToken("") // Close has nothing left to delete
	}
	n.Close()
	if err != nil {
		return wrapService("mesh: leave", err)
	}
	return nil
}

// applyPresence records a peer's presence from a presence event and
// emits PeerOnline or PeerOffline. It changes nothing on the device.
func (n *Node) applyPresence(ev api.WatchEvent) {
	if ev.Peer == nil || ev.Peer.Online == nil {
		return
	}
	n.mu.Lock()
	p, ok := n.peers[ev.Peer.PublicKey]
	if ok {
		p.Online, p.LastSeen = ev.Peer.Online, ev.Peer.LastSeen
		next := maps.Clone(n.peers)
		next[ev.Peer.PublicKey] = p
		n.peers = next
	}
	if ev.Revision > n.revision {
		n.revision = ev.Revision
	}
	n.mu.Unlock()
	if !ok {
		return
	}
	t := PeerOffline
	if *p.Online {
		t = PeerOnline
	}
	n.events.emit(Event{Type: t, Time: time.Now(), Peer: publicPeer(p)})
	n.log.Debug("mesh: peer presence", "hostname", p.Hostname, "online", *p.Online)
}

// tokenRenewDue returns how long until the device token should be rotated
// (half its remaining life), and false when it does not expire.
func (n *Node) tokenRenewDue(now time.Time) (time.Duration, bool) {
	n.mu.Lock()
	exp := n.saved.DeviceTokenExpires
	n.mu.Unlock()
	if exp.IsZero() {
		return 0, false
	}
	return max(exp.Sub(now)/2, 0), true
}

// rotateToken gets a new device token and saves it.
func (n *Node) rotateToken(ctx context.Context) error {
	out, err := n.client.RotateToken(ctx)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.saved.DeviceToken, n.saved.DeviceTokenExpires = out.DeviceToken, out.ExpiresAt
	n.mu.Unlock()
	n.log.Info("mesh: device token rotated", "expires", out.ExpiresAt)
	return n.saveState()
}

// tokenLoop rotates the device token at half its remaining life, until
// Close. A failed rotation is retried after a minute.
func (n *Node) tokenLoop() {
	defer n.wg.Done()
	for {
		d, ok := n.tokenRenewDue(time.Now())
		if !ok {
			d = time.Hour // look again: a registration may bring an expiry
		}
		if !sleepCtx(n.ctx, d) {
			return
		}
		if !ok {
			continue
		}
		if err := n.rotateToken(n.ctx); err != nil {
			if n.ctx.Err() != nil {
				return
			}
			n.log.Warn("mesh: rotating the device token failed; retrying", "err", err)
			if !sleepCtx(n.ctx, time.Minute) {
				return
			}
		}
	}
}

// Forget deletes the device registered in the state directory dir at its
// service, with the saved device token, and removes the registration from
// dir (the key stays: the next Join registers a new device with it). It is
// `wiremesh down` for a node that is not running: a node running with dir
// gives ErrStateDirInUse. opts may give WithToken (its certificate
// fingerprint pins the service), WithInsecureHTTP and WithLogger.
func Forget(ctx context.Context, dir string, opts ...Option) error {
	fail := func(err error) error { return wrapService("mesh.Forget", err) }
	if dir == "" {
		return fail(errors.New("no state directory"))
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return fail(err)
	}
	sd := stateDir(dir)
	lock, err := sd.lock()
	if err != nil {
		return fail(err)
	}
	defer lock.Close()
	s, err := sd.load()
	if err != nil {
		return fail(err)
	}
	if s == nil || s.DeviceToken == "" {
		return fail(fmt.Errorf("state dir %q holds no registration", dir))
	}
	client, err := controlclient.New(controlclient.Config{URL: s.URL, Token: cfg.token, Fingerprint: s.Fingerprint,
		InsecureHTTP: cfg.insecureHTTP, Logger: cfg.logger})
	if err != nil {
		return fail(err)
	}
	defer client.Close()
	client.SetDeviceToken(s.DeviceToken)
	if err := client.DeleteSelf(ctx); err != nil {
		return fail(err)
	}
	if err := os.Remove(filepath.Join(dir, stateFileName)); err != nil {
		return fail(err)
	}
	return nil
}
