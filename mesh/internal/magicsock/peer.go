package magicsock

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// Probe timing.
const (
	// punchDelays are the gaps between rounds of pings to every candidate
	// of a peer without a working direct path; the last repeats while the
	// peer stays without one (that is how a relayed pair finds a direct
	// path that opens later).
	// The first rounds are quick: both sides of a hole punch send at once,
	// and the first pings of each side are expected to die in the other's
	// NAT.
	heartbeat = 2 * time.Second
	// trustTimeout is how long a direct path stays chosen without a pong
	// (or an authenticated packet from it).
	trustTimeout = 5 * time.Second
	// upgradeInterval is how often a peer with a direct path pings its
	// other candidates, in case a better one works now.
	upgradeInterval = 30 * time.Second
	// asleepProbeInterval is how often a peer asleep (trimmed, see
	// Conn.SetAsleep) is probed: its chosen path only, or every candidate
	// when it has none. A peer that wakes is probed at once (every
	// candidate) and has trustTimeout to confirm its path. Not never:
	// each side's pings keep its NAT's mapping towards the other open
	// (RFC 4787 asks NATs to keep an idle UDP mapping 2 minutes at least,
	// so the two sides' pings a minute apart keep both open), so the first
	// packet after a long silence still goes straight through; and a pong
	// keeps the path's round-trip time current. An idle full mesh of 100
	// sends 30 times fewer pings than at heartbeat.
	asleepProbeInterval = 60 * time.Second
	// asleepTrust is how long an asleep peer's path stays chosen without
	// a pong: one lost ping does not drop it (which would bring up the
	// relay for a peer nobody talks to).
	asleepTrust = 2*asleepProbeInterval + trustTimeout
	// pingExpiry forgets unanswered pings.
	pingExpiry = 5 * time.Second
	// maxPending bounds the unanswered pings remembered per peer.
	maxPending = 64
	// maxPeerCandidates bounds the addresses probed per peer.
	maxPeerCandidates = 16
	// initCrossWindow: an initiation from a peer arriving this soon after
	// ours crossed it (see Conn.crossed).
	initCrossWindow = time.Second
	// crossHold is how long a crossing initiation is withheld: longer than
	// the round trip that brings the answer to ours.
	crossHold = 250 * time.Millisecond
	// initRetryWindow: an initiation still unanswered this long after it
	// was sent is sent again on a direct path that opens (see
	// Conn.updatePath).
	initRetryWindow = 4 * time.Second
	// initRetryMinAge spaces such a resend from the first copy.
	initRetryMinAge = 100 * time.Millisecond
)

var punchDelays = []time.Duration{
	150 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 4 * time.Second,
}

// candidate types ranked by preference (lower is better); a peer-reflexive
// address (the source of an authenticated ping) ranks last among direct.
const (
	rankLocal = iota
	rankManual
	rankReflexive
	rankPeerReflexive
)

func rankOf(t api.CandidateType) int {
	switch t {
	case api.CandidateLocal:
		return rankLocal
	case api.CandidateReflexive:
		return rankReflexive
	default:
		return rankManual
	}
}

// peerCand is one address of a peer and what probing learned about it.
type peerCand struct {
	addr     netip.AddrPort
	ep       *udpbind.Endpoint
	rank     int
	lastPong time.Time
	rtt      time.Duration
	learned  time.Time // peer-reflexive: when last seen (expires)
}

type pendingPing struct {
	addr netip.AddrPort
	sent time.Time
}

// path is where a peer's packets go: a direct address or, when direct is
// nil, the relay (if up) or a spray to every candidate.
type path struct {
	direct *udpbind.Endpoint
}

// peer is the state of one WireGuard peer.
type peer struct {
	key  api.Key
	ep   *Endpoint
	cur  atomic.Pointer[path]
	init atomic.Int64 // unix nanos of our last unanswered initiation, 0 if none
	resp atomic.Int64 // unix nanos of our last handshake response, 0 if none
	// asleep: the device holds no state for the peer (see Conn.SetAsleep).
	asleep atomic.Bool

	// mu guards the fields below.
	mu        sync.Mutex
	mac       []byte // disco MAC key; nil for an unusable (low-order) key
	name      string
	cands     []*peerCand // advertised first, then peer-reflexive
	pending   map[txID]pendingPing
	best      *peerCand // the chosen direct path; nil: relay or none
	bestSeen  time.Time // last pong or authenticated packet on best
	burst     int       // index into punchDelays of the next gap
	nextProbe time.Time
	lastFull  time.Time // last round of pings to every candidate
	since     time.Time // when the peer was added
	lastPath  string    // for logging changes
	lastInit  []byte    // our last handshake initiation (see Conn.updatePath)
	pings     pingGuard // pings accepted from the peer (replays are dropped)
	// lastStaleLog is when a probe of the peer outside the time window
	// was last logged as a warning.
	lastStaleLog time.Time
	olderLogged  bool   // a v1 probe of the peer was logged (Conn.olderProbe)
	heldInit     []byte // the peer's initiation withheld (see Conn.withhold)
	heldTimer    *time.Timer
	wakeQ        []wakeMsg // messages waiting for the peer to wake (see Conn.wake)
	waking       bool      // a goroutine is waking the peer
}

// Endpoint is the conn.Endpoint of a peer: wireguard-go stores it as the
// peer's endpoint (configured through UAPI, see Conn.ParseEndpoint) and
// the Conn sends through whatever path it chose for the peer.
type Endpoint struct {
	p *peer
}

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString implements conn.Endpoint: the direct address in use, or
// EndpointString of the peer when none is.
func (e *Endpoint) DstToString() string {
	if d := e.p.cur.Load().direct; d != nil {
		return d.DstToString()
	}
	return EndpointString(e.p.key)
}

// DstToBytes implements conn.Endpoint (cookie MACs).
func (e *Endpoint) DstToBytes() []byte {
	if d := e.p.cur.Load().direct; d != nil {
		return d.DstToBytes()
	}
	return e.p.key[:]
}

// DstIP implements conn.Endpoint.
func (e *Endpoint) DstIP() netip.Addr {
	if d := e.p.cur.Load().direct; d != nil {
		return d.DstIP()
	}
	return netip.Addr{}
}

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }

func newPeer(priv, key api.Key, now time.Time) *peer {
	p := &peer{key: key, pending: map[txID]pendingPing{}, since: now, nextProbe: now}
	p.ep = &Endpoint{p: p}
	p.mac, _ = discoKey(priv, key)
	p.cur.Store(&path{})
	return p
}

// setCandidates replaces the advertised candidates, keeping what was
// learned about addresses that stay. Reports whether anything changed.
func (p *peer) setCandidatesLocked(cs []api.Candidate) bool {
	old := make(map[netip.AddrPort]*peerCand, len(p.cands))
	for _, c := range p.cands {
		old[c.addr] = c
	}
	var next []*peerCand
	seen := map[netip.AddrPort]bool{}
	changed := false
	for _, c := range cs {
		a := unmap(c.Addr)
		if !a.IsValid() || seen[a] || len(next) >= maxPeerCandidates {
			continue
		}
		seen[a] = true
		pc := old[a]
		if pc == nil {
			pc = &peerCand{addr: a, ep: udpbind.NewEndpoint(a)}
			changed = true
		}
		pc.rank, pc.learned = rankOf(c.Type), time.Time{}
		next = append(next, pc)
	}
	for _, c := range p.cands { // keep peer-reflexive ones
		if !c.learned.IsZero() && !seen[c.addr] && len(next) < maxPeerCandidates {
			seen[c.addr] = true
			next = append(next, c)
		}
	}
	if len(next) != len(p.cands) {
		changed = true
	}
	p.cands = next
	if p.best != nil && !seen[p.best.addr] {
		p.best = nil
	}
	return changed
}

func (p *peer) candLocked(a netip.AddrPort) *peerCand {
	for _, c := range p.cands {
		if c.addr == a {
			return c
		}
	}
	return nil
}

// punchLocked starts a fast round of probes.
func (p *peer) punchLocked(now time.Time) {
	p.burst = 0
	p.nextProbe = now
}

// pathLocked returns the name of the path in use.
func (p *peer) pathName(relayUp bool) string {
	if p.cur.Load().direct != nil {
		return PathDirect
	}
	if relayUp {
		return PathRelay
	}
	return ""
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
