package magicsock

import (
	"net/netip"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/udpbind"
)

// handleDisco answers a ping and learns from a pong. It runs on a receive
// goroutine. A probe outside the time window, and a ping seen before, are
// dropped (see disco.go); a ping never changes the path on its own: it
// may add its source as an address to probe, and only a pong to a ping of
// ours makes an address the path.
func (c *Conn) handleDisco(b []byte, from netip.AddrPort) {
	from = unmap(from)
	if len(b) == discoV1Len {
		c.olderProbe(b, from)
		return
	}
	p := c.peer(discoSender(b), false)
	if p == nil {
		return // not a peer of ours: nobody we share a key with
	}
	p.mu.Lock()
	mac := p.mac
	p.mu.Unlock()
	if mac == nil {
		return
	}
	kind, at, tx, err := parseDisco(b, mac)
	if err != nil {
		c.log.Debug("magicsock: dropped a probe", "from", from, "err", err)
		return
	}
	now := time.Now()
	if !fresh(at, now) {
		c.staleProbe(p, from, at, now)
		return
	}
	switch kind {
	case discoPing:
		p.mu.Lock()
		ok := p.pings.accept(tx, at)
		p.mu.Unlock()
		if !ok {
			c.log.Debug("magicsock: dropped a replayed ping", "peer", p.key, "from", from)
			return
		}
		if c.pongs.allow(from, now) {
			pong := appendDisco(make([]byte, 0, discoLen), discoPong, c.keys().pub, now, tx, mac)
			_ = c.sendRaw(pong, from)
		}
		c.learnPeerReflexive(p, from, now)
	case discoPong:
		c.handlePong(p, tx, from, now)
	}
}

// learnPeerReflexive records the source of an authenticated ping as an
// address of p (its NAT's mapping towards this node) and, when p has no
// direct path yet, probes it back at once: the pinging side just opened
// its NAT towards us.
func (c *Conn) learnPeerReflexive(p *peer, from netip.AddrPort, now time.Time) {
	if q := (*c.byAddr.Load())[from]; q != nil && q != p {
		// Another peer's address: a ping of p's from there (a replay, or
		// a stale NAT mapping) must not make the address ambiguous, which
		// would unmap it from its owner.
		return
	}
	p.mu.Lock()
	pc := p.candLocked(from)
	added := false
	if pc == nil {
		if len(p.cands) >= maxPeerCandidates {
			p.dropOldestLearnedLocked()
		}
		if len(p.cands) < maxPeerCandidates {
			pc = &peerCand{addr: from, ep: udpbind.NewEndpoint(from), rank: rankPeerReflexive, learned: now}
			p.cands = append(p.cands, pc)
			added = true
		}
	} else if !pc.learned.IsZero() {
		pc.learned = now
	}
	if p.best == nil || added {
		p.punchLocked(now)
	}
	p.mu.Unlock()
	if added {
		c.peersMu.Lock()
		c.rebuildAddrsLocked()
		c.peersMu.Unlock()
	}
	c.wakeLoop()
}

func (p *peer) dropOldestLearnedLocked() {
	oldest := -1
	for i, pc := range p.cands {
		if !pc.learned.IsZero() && pc != p.best && (oldest < 0 || pc.learned.Before(p.cands[oldest].learned)) {
			oldest = i
		}
	}
	if oldest >= 0 {
		p.cands = append(p.cands[:oldest], p.cands[oldest+1:]...)
	}
}

// handlePong accepts a pong that answers a ping this node sent to from.
func (c *Conn) handlePong(p *peer, tx txID, from netip.AddrPort, now time.Time) {
	p.mu.Lock()
	pp, ok := p.pending[tx]
	if !ok || pp.addr != from {
		p.mu.Unlock()
		return // not ours, or from elsewhere than we pinged: proves nothing
	}
	delete(p.pending, tx)
	pc := p.candLocked(from)
	if pc == nil {
		p.mu.Unlock()
		return
	}
	pc.lastPong, pc.rtt = now, now.Sub(pp.sent)
	if !pc.learned.IsZero() {
		pc.learned = now
	}
	switch {
	case p.best == nil, better(pc, p.best):
		p.best = pc
		p.bestSeen = now
	case p.best == pc:
		p.bestSeen = now
	}
	p.mu.Unlock()
	c.updatePath(p)
}

// better reports whether a should replace the chosen path b: a better
// kind of address, or the same kind and clearly faster.
func better(a, b *peerCand) bool {
	if a == b {
		return false
	}
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	return a.rtt*3 < b.rtt*2
}

// updatePath publishes p's chosen path for Send and logs a change.
func (c *Conn) updatePath(p *peer) {
	p.mu.Lock()
	var next *path
	if p.best != nil {
		next = &path{direct: p.best.ep}
	} else {
		next = &path{}
	}
	if cur := p.cur.Load(); cur.direct != next.direct {
		p.cur.Store(next)
	}
	name := p.pathName(c.relay.connected())
	// An initiation sent before this path opened went to addresses that
	// did not work (or a relay the peer is not on): send it again on the
	// new direct path rather than wait for WireGuard's retry in 5 s. A
	// responder that got the first copy rejects this one as a replay.
	sent := p.init.Load()
	retry := next.direct != nil && p.lastPath != PathDirect && sent != 0 &&
		time.Since(time.Unix(0, sent)) < initRetryWindow && len(p.lastInit) > 0
	changed := name != p.lastPath
	old := p.lastPath
	p.lastPath = name
	hostname := p.name
	var ep string
	if next.direct != nil {
		ep = next.direct.DstToString()
	}
	p.mu.Unlock()
	if retry {
		// Not at once: a copy arriving together with the first (if that
		// one got through after all) could be taken by two of the
		// responder's handshake workers at the same time, and the two
		// answers would leave the pair with different keys.
		wait := initRetryMinAge - time.Since(time.Unix(0, sent))
		time.AfterFunc(max(wait, 0), func() { c.retryInit(p, sent) })
	}
	if changed && name != "" {
		c.log.Info("mesh: path to peer changed", "peer", hostname, "path", name, "from", orNone(old), "endpoint", ep)
	}
	if changed {
		c.relay.needChanged()
	}
}

// retryInit sends our initiation of time sent again on p's direct path,
// if it is still the last one and unanswered.
func (c *Conn) retryInit(p *peer, sent int64) {
	d := p.cur.Load().direct
	if d == nil || p.init.Load() != sent || c.session() == nil {
		return
	}
	p.mu.Lock()
	b := append([]byte(nil), p.lastInit...)
	p.mu.Unlock()
	if len(b) > 0 {
		_ = c.inner.Send([][]byte{b}, d)
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// probe sends the pings due for p and returns when p next needs
// attention.
func (c *Conn) probe(p *peer, now time.Time) time.Time {
	asleep := p.asleep.Load()
	trust := trustTimeout
	if asleep {
		trust = asleepTrust
	}
	p.mu.Lock()
	lost := false
	if p.best != nil && now.Sub(p.bestSeen) > trust {
		c.log.Debug("magicsock: direct path went quiet", "peer", p.name, "endpoint", p.best.addr)
		p.best = nil
		lost = true
		p.punchLocked(now)
	}
	for tx, pp := range p.pending {
		if now.Sub(pp.sent) > pingExpiry {
			delete(p.pending, tx)
		}
	}
	for i := 0; i < len(p.cands); i++ { // forget stale peer-reflexive addresses
		if pc := p.cands[i]; !pc.learned.IsZero() && pc != p.best && now.Sub(pc.learned) > 2*upgradeInterval {
			p.cands = append(p.cands[:i], p.cands[i+1:]...)
			i--
		}
	}
	var targets []netip.AddrPort
	if !now.Before(p.nextProbe) && p.mac != nil {
		// Asleep: no upgrades, the chosen path is enough (see
		// asleepProbeInterval).
		full := p.best == nil || !asleep && now.Sub(p.lastFull) >= upgradeInterval
		for _, pc := range p.cands {
			if full || pc == p.best {
				targets = append(targets, pc.addr)
			}
		}
		if full {
			p.lastFull = now
		}
		switch {
		case asleep:
			p.nextProbe = now.Add(asleepProbeInterval)
		case p.best != nil:
			p.nextProbe = now.Add(heartbeat)
		case p.burst < len(punchDelays):
			p.nextProbe = now.Add(punchDelays[p.burst])
			p.burst++
		default:
			p.nextProbe = now.Add(punchDelays[len(punchDelays)-1])
		}
	}
	pings := make([][]byte, 0, len(targets))
	self := c.keys().pub
	for _, a := range targets {
		if len(p.pending) >= maxPending {
			break
		}
		tx := newTxID()
		p.pending[tx] = pendingPing{addr: a, sent: now}
		pings = append(pings, appendDisco(make([]byte, 0, discoLen), discoPing, self, now, tx, p.mac))
	}
	next := p.nextProbe
	if p.best != nil {
		if t := p.bestSeen.Add(trust); t.Before(next) {
			next = t
		}
	}
	p.mu.Unlock()
	for i, b := range pings {
		_ = c.sendRaw(b, targets[i])
	}
	c.pingsSent.Add(uint64(len(pings)))
	if lost {
		c.updatePath(p)
	}
	return next
}

// staleProbeLogEvery spaces the warnings about one peer's probes being
// outside the time window.
const staleProbeLogEvery = time.Minute

// staleProbe logs a probe dropped for its time: a replay, or clocks that
// disagree (which keeps the pair off a direct path).
func (c *Conn) staleProbe(p *peer, from netip.AddrPort, at int64, now time.Time) {
	skew := time.Duration(now.UnixMilli()-at) * time.Millisecond
	p.mu.Lock()
	warn := now.Sub(p.lastStaleLog) >= staleProbeLogEvery
	if warn {
		p.lastStaleLog = now
	}
	name := p.name
	p.mu.Unlock()
	if warn {
		c.log.Warn("magicsock: dropped a probe made outside the time window: a replay, or the clocks of the two members disagree (no direct path until they agree)",
			"peer", name, "from", from, "age", skew, "window", discoWindow)
		return
	}
	c.log.Debug("magicsock: dropped a stale probe", "peer", name, "from", from, "age", skew)
}

// olderProbe drops a probe in format v1 (no time) and logs, once per
// peer, that the peer runs an older wiremesh: the pair has no direct path
// until it upgrades. The v1 MAC is not checked (it would cost a key
// agreement per datagram to find out), so the log names the peer the
// probe claims to come from; a forged one costs one line per peer at
// most.
func (c *Conn) olderProbe(b []byte, from netip.AddrPort) {
	var k api.Key
	copy(k[:], b[discoKeyOff:discoKeyOff+len(k)])
	p := c.peer(k, false)
	if p == nil {
		return
	}
	p.mu.Lock()
	first := !p.olderLogged
	p.olderLogged = true
	name := p.name
	p.mu.Unlock()
	if first {
		c.log.Info("mesh: peer "+name+" runs an older wiremesh (probe format v1): no direct path until it upgrades",
			"peer", name, "from", from)
		return
	}
	c.log.Debug("magicsock: dropped a v1 probe", "peer", name, "from", from)
}

// Pong rate limit per source address (address and port): a member's
// socket pings this node at most once per candidate per round (16, rounds
// 150 ms apart at the quickest).
const (
	maxPongsPerSource = 64   // per second
	maxPongSources    = 1024 // sources tracked per second; more get no pong
)

// pongLimiter bounds the pongs sent to one source address per second.
type pongLimiter struct {
	mu  sync.Mutex // guards the fields below
	sec int64
	n   map[netip.AddrPort]int
}

// allow counts a pong to a at now and reports whether it may be sent.
func (l *pongLimiter) allow(a netip.AddrPort, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := now.Unix(); s != l.sec || l.n == nil {
		l.sec = s
		if l.n == nil {
			l.n = make(map[netip.AddrPort]int)
		}
		clear(l.n)
	}
	n, ok := l.n[a]
	if (!ok && len(l.n) >= maxPongSources) || n >= maxPongsPerSource {
		return false
	}
	l.n[a] = n + 1
	return true
}
