package magicsock

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v3"

	"github.com/wiremesh/wiremesh/control/api"
)

// Discovery timing.
const (
	// stunInterval is how often the mapping is checked while STUN works
	// (NATs forget idle UDP mappings after 30 s or more; the probes keep
	// the ones to peers open).
	stunInterval = 20 * time.Second
	// stunRoundTimeout is how long a round waits for its answers.
	stunRoundTimeout = 1500 * time.Millisecond
	// stunRetryMax caps the retry interval while no answer comes (UDP
	// blocked): when UDP opens again, a reflexive candidate follows
	// within this.
	stunRetryMax = 8 * time.Second
	// maxLocalCandidates bounds the interface addresses advertised.
	maxLocalCandidates = 8
	publishTimeout     = 10 * time.Second
	publishRetryMax    = 30 * time.Second
)

// selfState is what the node learned about its own reachability.
type selfState struct {
	// mu guards the fields below.
	mu        sync.Mutex
	round     map[[stun.TransactionIDSize]byte]int // pending request → server index
	roundEnd  time.Time                            // zero: no round running
	answers   []netip.AddrPort                     // per server; invalid: none
	fails     int                                  // rounds in a row without any answer
	nextRound time.Time
	cands     []api.Candidate
	nat       api.NATType
	dirty     bool // cands/nat not published yet
	notify    chan struct{}
}

// SelfInfo is what the node advertises about itself.
type SelfInfo struct {
	Candidates []api.Candidate
	NAT        api.NATType
	// Relay reports whether the relay connection is up.
	Relay bool
}

// Self returns the node's current candidates and NAT kind.
func (c *Conn) Self() SelfInfo {
	c.self.mu.Lock()
	defer c.self.mu.Unlock()
	return SelfInfo{Candidates: slices.Clone(c.self.cands), NAT: c.self.nat, Relay: c.relay.connected()}
}

// SetSTUN replaces the STUN responders asked (at most two are used).
func (c *Conn) SetSTUN(servers []netip.AddrPort) {
	c.mu.Lock()
	c.stunCfg = slices.Clone(servers)
	c.mu.Unlock()
	c.self.mu.Lock()
	c.self.nextRound = time.Time{}
	c.self.mu.Unlock()
	c.wakeLoop()
}

// findSTUN asks Config.FindSTUN for the STUN responders, with backoff,
// until it answers or the session ends (nothing to do when they are
// known).
func (c *Conn) findSTUN(s *session) {
	defer s.wg.Done()
	if c.cfg.FindSTUN == nil || len(c.stunServers()) > 0 {
		return
	}
	for fails := 0; ; fails++ {
		ctx, cancel := context.WithTimeout(s.ctx, publishTimeout)
		servers, err := c.cfg.FindSTUN(ctx)
		cancel()
		if err == nil {
			c.SetSTUN(servers)
			return
		}
		c.log.Debug("magicsock: STUN responders unknown yet", "err", err)
		t := time.NewTimer(min(publishRetryMax, time.Second<<min(fails, 5)))
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (c *Conn) stunServers() []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.stunCfg) > 2 {
		return c.stunCfg[:2]
	}
	return c.stunCfg
}

// discover runs the STUN schedule: it ends a round whose time is up,
// starts the next one when due, and returns when it needs to run again.
func (c *Conn) discover(s *session, now time.Time) time.Time {
	st := &c.self
	st.mu.Lock()
	if !st.roundEnd.IsZero() && !now.Before(st.roundEnd) {
		st.mu.Unlock()
		c.finishRound(s.port)
		st.mu.Lock()
	}
	if !st.roundEnd.IsZero() {
		defer st.mu.Unlock()
		return st.roundEnd
	}
	if now.Before(st.nextRound) {
		defer st.mu.Unlock()
		return st.nextRound
	}
	servers := c.stunServers()
	st.round = map[[stun.TransactionIDSize]byte]int{}
	st.answers = make([]netip.AddrPort, len(servers))
	st.roundEnd = now.Add(stunRoundTimeout)
	var reqs [][]byte
	for i := range servers {
		tx, raw := NewBindingRequest()
		st.round[tx] = i
		reqs = append(reqs, raw)
	}
	end := st.roundEnd
	st.mu.Unlock()
	if len(servers) == 0 {
		c.finishRound(s.port)
		return c.discover(s, now)
	}
	for i, b := range reqs {
		_ = c.sendRaw(b, servers[i])
	}
	return end
}

// ParseBindingSuccess decodes a STUN binding success answer: its
// transaction ID and the reflexive address it carries
// (XOR-MAPPED-ADDRESS, IPv4-mapped addresses unmapped). ok is false for
// anything else: another message type, a FINGERPRINT that does not match,
// no or a bad mapped address.
func ParseBindingSuccess(b []byte) (tx [stun.TransactionIDSize]byte, mapped netip.AddrPort, ok bool) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
		return tx, mapped, false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return tx, mapped, false
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil {
		return tx, mapped, false
	}
	ip, ok := netip.AddrFromSlice(xa.IP)
	if !ok || xa.Port <= 0 || xa.Port > 65535 {
		return tx, mapped, false
	}
	return m.TransactionID, netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), true
}

// NewBindingRequest returns a STUN binding request with a new random
// transaction ID and a FINGERPRINT, as the Conn sends them.
func NewBindingRequest() (tx [stun.TransactionIDSize]byte, raw []byte) {
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	return m.TransactionID, m.Raw
}

// handleSTUN takes a binding answer to one of the current round's
// requests, from the server it was sent to; everything else is ignored.
func (c *Conn) handleSTUN(b []byte, from netip.AddrPort) {
	tx, mapped, ok := ParseBindingSuccess(b)
	if !ok {
		return
	}
	servers := c.stunServers()
	st := &c.self
	st.mu.Lock()
	i, ok := st.round[tx]
	if !ok || i >= len(servers) || unmap(servers[i]) != unmap(from) {
		st.mu.Unlock()
		c.log.Debug("magicsock: ignored a STUN answer", "from", from)
		return
	}
	delete(st.round, tx)
	st.answers[i] = mapped
	done := len(st.round) == 0
	if done {
		st.roundEnd = time.Now() // finish now
	}
	st.mu.Unlock()
	if done {
		c.wakeLoop()
	}
}

// finishRound turns the round's answers into candidates and the NAT kind,
// and has them published when they changed.
func (c *Conn) finishRound(port uint16) {
	st := &c.self
	st.mu.Lock()
	var got []netip.AddrPort
	for _, a := range st.answers {
		if a.IsValid() {
			got = append(got, a)
		}
	}
	st.round, st.roundEnd = nil, time.Time{}
	if len(got) == 0 && len(st.answers) > 0 {
		st.fails++
		st.nextRound = time.Now().Add(min(stunRetryMax, time.Second<<min(st.fails-1, 4)))
	} else {
		st.fails = 0
		st.nextRound = time.Now().Add(stunInterval)
	}
	answered := len(got) == len(st.answers)
	st.mu.Unlock()

	local := c.localAddrs()
	nat := api.NATUnknown
	var reflexive netip.AddrPort
	switch {
	case len(got) >= 2 && got[0] != got[1]:
		nat = api.NATSymmetric // the mapping depends on the destination: useless to peers
	case len(got) >= 1:
		reflexive = got[0]
		if slices.Contains(local, reflexive.Addr()) {
			nat, reflexive = api.NATNone, netip.AddrPort{}
		} else if len(got) >= 2 && answered {
			nat = api.NATEndpointIndependent
		}
	}
	cands := c.candidates(local, port, reflexive)
	st.mu.Lock()
	changed := !slices.Equal(cands, st.cands) || nat != st.nat
	if changed {
		st.cands, st.nat, st.dirty = cands, nat, true
	}
	st.mu.Unlock()
	if changed {
		c.log.Debug("magicsock: candidates", "candidates", cands, "nat", nat)
		c.notifyPublish()
		c.punchAll()
	}
}

// candidates orders what to advertise: manual, local, reflexive.
func (c *Conn) candidates(local []netip.Addr, port uint16, reflexive netip.AddrPort) []api.Candidate {
	var out []api.Candidate
	seen := map[netip.AddrPort]bool{}
	add := func(a netip.AddrPort, t api.CandidateType) {
		a = unmap(a)
		if a.IsValid() && a.Port() != 0 && !seen[a] {
			seen[a] = true
			out = append(out, api.Candidate{Addr: a, Type: t})
		}
	}
	for _, a := range c.cfg.Manual {
		add(a, api.CandidateManual)
	}
	n := 0
	for _, a := range local {
		if n < maxLocalCandidates {
			add(netip.AddrPortFrom(a, port), api.CandidateLocal)
			n++
		}
	}
	add(reflexive, api.CandidateReflexive)
	return out
}

// localAddrs returns the addresses to advertise as local candidates.
func (c *Conn) localAddrs() []netip.Addr {
	var as []netip.Addr
	if c.cfg.LocalAddrs != nil {
		as = c.cfg.LocalAddrs()
	} else {
		as = InterfaceAddrs()
	}
	return CandidateAddrs(as, c.cfg.SkipLocal)
}

// CandidateAddrs keeps the addresses of as worth advertising as local
// candidates: valid, unmapped, not unspecified, link-local or multicast,
// and not skipped by skip (nil: none skipped).
func CandidateAddrs(as []netip.Addr, skip func(netip.Addr) bool) []netip.Addr {
	out := as[:0:0]
	for _, a := range as {
		a = a.Unmap()
		if !a.IsValid() || a.IsUnspecified() || a.IsLinkLocalUnicast() || a.IsMulticast() ||
			(skip != nil && skip(a)) {
			continue
		}
		out = append(out, a)
	}
	return out
}

// InterfaceAddrs returns the addresses of the host's interfaces that are
// up, except loopback ones.
func InterfaceAddrs() []netip.Addr {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if pn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(pn.IP); ok && !ip.Unmap().IsLoopback() {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out
}

func (c *Conn) notifyPublish() {
	select {
	case c.self.notify <- struct{}{}:
	default:
	}
}

// publishLoop hands the latest candidates to Config.Publish, retrying with
// backoff until it succeeds.
func (c *Conn) publishLoop(s *session) {
	defer s.wg.Done()
	if c.cfg.Publish == nil {
		return
	}
	fails := 0
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-c.self.notify:
		}
		for {
			c.self.mu.Lock()
			cands, nat, dirty := slices.Clone(c.self.cands), c.self.nat, c.self.dirty
			c.self.dirty = false
			c.self.mu.Unlock()
			if !dirty {
				break
			}
			ctx, cancel := context.WithTimeout(s.ctx, publishTimeout)
			err := c.cfg.Publish(ctx, cands, nat)
			cancel()
			if err == nil {
				fails = 0
				continue
			}
			if s.ctx.Err() != nil {
				return
			}
			c.self.mu.Lock()
			c.self.dirty = true
			c.self.mu.Unlock()
			fails++
			d := min(publishRetryMax, time.Second<<min(fails, 5))
			c.log.Debug("magicsock: publishing candidates failed", "err", err, "retry_in", d)
			t := time.NewTimer(d)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// loop runs probing, discovery and the relay's upkeep until the session
// ends.
func (c *Conn) loop(s *session) {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
		now := time.Now()
		next := now.Add(time.Minute)
		for _, p := range c.snapshotPeers() {
			if pn := c.probe(p, now); pn.Before(next) {
				next = pn
			}
		}
		if d := c.discover(s, now); d.Before(next) {
			next = d
		}
		if d := c.relay.maintain(s, now); !d.IsZero() && d.Before(next) {
			next = d
		}
		t.Reset(max(time.Until(next), 10*time.Millisecond))
	}
}
