package mesh

import (
	"fmt"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// SetTrimSessionAge sets how old a peer's last handshake must be for the
// peer to be trimmed (see trim.go) until the returned function restores
// the default. Only for tests that wait until both sides of a pair have
// trimmed each other: then neither holds a session, as after the real
// age.
func SetTrimSessionAge(d time.Duration) (restore func()) {
	trimSessionAge.Store(int64(d))
	return func() { trimSessionAge.Store(int64(defaultTrimSessionAge)) }
}

// DropSessions replaces every peer in n's WireGuard device by a fresh one
// without keepalive (quiet, as a woken peer is): the peers stay
// configured, and the next packet to or from one needs a handshake. This
// is a "cold" peer, the baseline a trimmed one is compared with.
func DropSessions(n *Node) error {
	n.mu.Lock()
	p := n.plane
	n.mu.Unlock()
	up, ok := p.(*userspacePlane)
	if !ok {
		return fmt.Errorf("DropSessions: not a userspace node")
	}
	d := up.dev
	d.mu.Lock()
	defer d.mu.Unlock()
	fresh := make(map[api.Key]wgPeer, len(d.applied))
	for k, w := range d.applied {
		w.Keepalive = 0
		fresh[k] = w
		d.trim.quiet[k] = true
	}
	d.guard.forget()
	if err := d.dev.IpcSet(diffPeers(d.applied, nil) + diffPeers(nil, fresh)); err != nil {
		return err
	}
	d.applied = fresh
	return nil
}

// MessagesSent returns how many WireGuard messages (handshake messages,
// data, keepalives; not probes) n's device has sent.
func MessagesSent(n *Node) uint64 {
	n.mu.Lock()
	p := n.plane
	n.mu.Unlock()
	if up, ok := p.(*userspacePlane); ok {
		return up.dev.guard.sent.Load()
	}
	return 0
}

// WithStatsInterval makes the node report its peers to the service at
// least every interval, looking for changed paths every check.
func WithStatsInterval(interval, check time.Duration) Option {
	return func(c *config) { c.statsInterval, c.statsCheck = interval, check }
}

// StatsReport and StatsDue expose statsReport and statsDue.
var (
	StatsReport = statsReport
	StatsDue    = statsDue

	StatsUnsupported = statsUnsupported
)

// PingsSent returns how many probes n's bind has sent (0 for a node
// without one).
func PingsSent(n *Node) uint64 {
	n.mu.Lock()
	p := n.plane
	n.mu.Unlock()
	switch p := p.(type) {
	case *userspacePlane:
		return p.dev.ms.PingsSent()
	default:
		return 0
	}
}

// WokenDelivered returns how many messages that woke a trimmed peer n's
// bind has handed to its WireGuard device (magicsock.Conn.WokenDelivered).
func WokenDelivered(n *Node) uint64 {
	n.mu.Lock()
	p := n.plane
	n.mu.Unlock()
	if up, ok := p.(*userspacePlane); ok {
		return up.dev.ms.WokenDelivered()
	}
	return 0
}
