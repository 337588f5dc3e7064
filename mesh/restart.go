package mesh

import (
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// Peers that restarted.
//
// A member that restarts registers again, and the service counts it in
// the peer's generation (api.Peer.Generation). Its old WireGuard sessions
// died with the process; a member that keeps one does not notice before
// its own traffic goes unanswered for Keepalive-Timeout + Rekey-Timeout
// (15 s), and if the restarted peer cannot reach it (a spoke behind NAT),
// nothing else repairs the path. So when a peer's generation changes and
// no handshake with it follows within restartRetries[0], the device
// replaces the peer (remove, add): the new peer has no session, and, with
// a persistent keepalive, initiates at once. It is re-added with the
// endpoint the device was using (learnt from the peer's packets, e.g.
// through a NAT) when there is one.
//
// Why wait: a restarted peer that can reach this node starts with no
// session and initiates to it at once, about when the news arrives here.
// Initiating too would cross its initiation in flight: each side answers
// the other's, which drops its own, and wireguard-go, completing its own
// handshake on one worker while answering the crossing initiation on
// another, can end with a session whose receiving index it has just
// deleted, so that everything the other side sends is dropped for 15 s
// (TestPrefixAddedAndReleasedAtRuntime failed so about one run in
// twenty). A handshake completed after the news means the restarted peer
// reached this node: nothing to replace.
//
// The news may also arrive before the restarted peer's device is up or
// knows this node (an initiation is then dropped). So a replaced peer
// without a handshake restartRetries later is replaced again, a few times;
// then WireGuard's own retries take over. A replacement is a deliberate
// initiation: the crossGuard forgets what it saw, so it does not drop it.
var restartRetries = []time.Duration{
	250 * time.Millisecond,
	500 * time.Millisecond,
	time.Second,
	2 * time.Second,
}

// restart is a peer that restarted, waiting for a handshake after the
// news (see above).
type restart struct {
	news  time.Time // when the new generation was applied
	tries int       // replacements so far
	due   time.Time // when to look again
}

// restartsLocked returns the peers of eff to replace now (see above) and
// when to look again (zero: nothing to wait for). have is what the device
// has. It reads the device state only when a restarted peer is due.
func (d *wgDevice) restartsLocked(have, eff map[api.Key]wgPeer, now time.Time) (map[api.Key]bool, time.Time, error) {
	for k, w := range eff {
		if h, ok := have[k]; ok && restarted(h, w) {
			d.restarts[k] = &restart{news: now, due: now.Add(restartRetries[0])}
		}
	}
	var replace map[api.Key]bool
	var next time.Time
	var stats *devStats
	for k, r := range d.restarts {
		if _, ok := eff[k]; !ok {
			delete(d.restarts, k)
			continue
		}
		if now.Before(r.due) {
			next = earliest(next, r.due)
			continue
		}
		if stats == nil {
			st, err := d.stats()
			if err != nil {
				return nil, time.Time{}, err
			}
			stats = &st
		}
		if stats.peers[k].lastHandshake.After(r.news) {
			delete(d.restarts, k)
			continue
		}
		if replace == nil {
			replace = map[api.Key]bool{}
		}
		replace[k] = true
		r.tries++
		if r.tries == len(restartRetries) {
			delete(d.restarts, k) // the last one: WireGuard's retries follow
			continue
		}
		r.due = now.Add(restartRetries[r.tries])
		next = earliest(next, r.due)
	}
	return replace, next, nil
}

// replaceConfig returns the UAPI text that removes the peers in replace
// and adds them again as in eff, with the endpoint the device used for
// them when it had one (see above), followed by diffPeers(have, eff) for
// the others. It does not take d.mu; it reads the device state.
func (d *wgDevice) replaceConfig(replace map[api.Key]bool, have, eff map[api.Key]wgPeer) (string, error) {
	if len(replace) == 0 {
		return diffPeers(have, eff), nil
	}
	st, err := d.stats()
	if err != nil {
		return "", err
	}
	rest, fresh := map[api.Key]wgPeer{}, map[api.Key]wgPeer{}
	for k, h := range have {
		if !replace[k] {
			rest[k] = h
		}
	}
	for k := range replace {
		w := eff[k]
		if ep := st.peers[k].endpoint; ep.IsValid() {
			w.Endpoint = ep
		}
		fresh[k] = w
	}
	gone := make(map[api.Key]wgPeer, len(replace))
	for k := range replace {
		gone[k] = have[k]
	}
	d.guard.forget()
	// Removing first, then adding as new peers.
	return diffPeers(gone, nil) + diffPeers(nil, fresh) + diffPeers(rest, withoutKeys(eff, replace)), nil
}

func withoutKeys(m map[api.Key]wgPeer, drop map[api.Key]bool) map[api.Key]wgPeer {
	out := make(map[api.Key]wgPeer, len(m))
	for k, v := range m {
		if !drop[k] {
			out[k] = v
		}
	}
	return out
}

// earliest returns the earlier of a and b, ignoring a zero time.
func earliest(a, b time.Time) time.Time {
	if b.IsZero() {
		return a
	}
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}
