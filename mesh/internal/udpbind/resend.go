package udpbind

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Fast resending of handshake initiations.
//
// wireguard-go retries an unanswered handshake initiation only after 5 s
// (REKEY_TIMEOUT, plus jitter). In a mesh the first initiation towards a
// member races the coordination service: a new member learns its peers from
// its first snapshot and initiates at once, while a peer may not have the
// newcomer's key from its own watch stream yet and drops the initiation as
// coming from an unknown key. Measured with BenchmarkJoinFirstByte (package
// mesh), about one join in fifty waited those 5 s.
//
// The bind therefore resends the very same initiation datagram, unchanged,
// resendDelays after it was first sent, until a handshake response or a
// cookie reply for it arrives, wireguard-go sends a newer initiation to the
// same endpoint, or the schedule ends (before wireguard-go's own retry). This
// is safe: a responder that already consumed the first copy rejects the
// duplicate as a replay (its TAI64N timestamp is not newer than the one it
// recorded), so a resend never creates a second session; a responder that dropped it, or never got
// it, answers the copy like the original.
//
// A duplicate still costs its responder the Diffie-Hellman work before the
// replay check, and a responder under load admits only 20 initiations per
// second from one source IP address (wireguard-go's rate limiter), so
// duplicates must not crowd out real initiations in a handshake storm (100
// members joining one zone at once converged in 10-30 s without resends, and
// in over 2 minutes with an unthrottled schedule). Hence: the schedule
// covers only the race with the service (the first 400 ms; later losses
// are left to wireguard-go), the resends of a bind share a budget
// (resendBurst, then resendRate per second; resends beyond it are skipped),
// and a cookie reply, which a responder sends only when under load, pauses
// all resends of the bind for cookiePause.
var resendDelays = []time.Duration{
	20 * time.Millisecond,
	60 * time.Millisecond,
	150 * time.Millisecond,
	400 * time.Millisecond,
}

const (
	resendBurst = 16
	resendRate  = 8 // per second
	cookiePause = 5 * time.Second
)

// WireGuard message types and sizes (the whitepaper, section 5.4).
const (
	msgInitiation    = 1
	msgResponse      = 2
	msgCookieReply   = 3
	sizeInitiation   = 148
	sizeResponse     = 92
	sizeCookieReply  = 64
	initiationSender = 4 // offset of the sender index in an initiation
)

// resender tracks the initiations sent and not answered yet.
type resender struct {
	// active counts pending initiations: the receive path looks at packet
	// types only while it is non-zero.
	active atomic.Int32

	// mu guards the fields below.
	mu      sync.Mutex
	pending map[uint32]*pendingInit // by sender index
	closed  bool
	tokens  float64   // resend budget left
	refill  time.Time // when tokens was last topped up
	paused  time.Time // no resends before then (see cookiePause)
}

type pendingInit struct {
	msg   []byte // a copy of the initiation
	ep    *Endpoint
	next  int // index in resendDelays of the next resend
	timer *time.Timer
}

// isInitiation reports whether b is a handshake initiation.
func isInitiation(b []byte) bool {
	return len(b) == sizeInitiation && binary.LittleEndian.Uint32(b) == msgInitiation
}

// sent records an initiation sent to ep and schedules its resends through
// send.
func (r *resender) sent(b []byte, ep *Endpoint, send func([]byte, *Endpoint)) {
	if len(resendDelays) == 0 {
		return
	}
	idx := binary.LittleEndian.Uint32(b[initiationSender:])
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if r.pending == nil {
		r.pending = map[uint32]*pendingInit{}
	}
	for k, p := range r.pending {
		if p.ep.ap == ep.ap { // a newer initiation to the same peer supersedes it
			r.dropLocked(k, p)
		}
	}
	if _, dup := r.pending[idx]; dup {
		return
	}
	p := &pendingInit{msg: append([]byte(nil), b...), ep: ep}
	r.pending[idx] = p
	r.active.Add(1)
	fire := func() {
		r.mu.Lock()
		if r.closed || r.pending[idx] != p {
			r.mu.Unlock()
			return
		}
		p.next++
		if p.next < len(resendDelays) {
			p.timer.Reset(resendDelays[p.next] - resendDelays[p.next-1])
		} else {
			r.dropLocked(idx, p)
		}
		ok := r.takeLocked(time.Now())
		r.mu.Unlock()
		if ok {
			send(p.msg, p.ep)
		}
	}
	p.timer = time.AfterFunc(resendDelays[0], fire)
}

// takeLocked takes one resend from the budget, reporting false when it is
// spent.
func (r *resender) takeLocked(now time.Time) bool {
	if now.Before(r.paused) {
		return false
	}
	if r.refill.IsZero() {
		r.tokens = resendBurst
	} else {
		r.tokens = min(resendBurst, r.tokens+max(0, now.Sub(r.refill).Seconds())*resendRate)
	}
	r.refill = now
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}

func (r *resender) dropLocked(idx uint32, p *pendingInit) {
	p.timer.Stop()
	delete(r.pending, idx)
	r.active.Add(-1)
}

// received looks at datagrams that arrived and ends the resends of the
// initiations they answer. Cheap when nothing is pending.
func (r *resender) received(bufs [][]byte, sizes []int, n int) {
	if r.active.Load() == 0 {
		return
	}
	for i := 0; i < n; i++ {
		b := bufs[i][:sizes[i]]
		var idx uint32
		cookie := false
		switch {
		case len(b) == sizeResponse && binary.LittleEndian.Uint32(b) == msgResponse:
			idx = binary.LittleEndian.Uint32(b[8:]) // receiver index
		case len(b) == sizeCookieReply && binary.LittleEndian.Uint32(b) == msgCookieReply:
			idx = binary.LittleEndian.Uint32(b[4:]) // receiver index
			cookie = true
		default:
			continue
		}
		r.mu.Lock()
		if cookie { // a responder under load: back off
			r.paused = time.Now().Add(cookiePause)
		}
		if p, ok := r.pending[idx]; ok {
			r.dropLocked(idx, p)
		}
		r.mu.Unlock()
	}
}

// close stops every pending resend; later calls to sent do nothing.
func (r *resender) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, p := range r.pending {
		r.dropLocked(k, p)
	}
	r.closed = true
}

// reopen lets an Open after Close track initiations again.
func (r *resender) reopen() {
	r.mu.Lock()
	r.closed = false
	r.mu.Unlock()
}

// resendTo is the send function the Bind gives its resender. An error is
// ignored: a failed resend is like a lost datagram, wireguard-go retries.
func (b *Bind) resendTo(msg []byte, ep *Endpoint) {
	_ = b.send([][]byte{msg}, ep)
}
