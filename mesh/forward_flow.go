package mesh

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The pieces of a forwarded connection or flow (see forwarder): what to
// close when it ends, the copy loops, the idle timer of UDP flows.

// fwdFlow is a forwarded connection or flow: what to close when its
// destination leaves the node's prefixes or the node closes.
type fwdFlow struct {
	dst netip.Addr

	mu     sync.Mutex // guards closed and conns
	closed bool
	conns  []io.Closer
}

// add adds c to the flow, or closes c and reports false when the flow is
// closed already.
func (fl *fwdFlow) add(c io.Closer) bool {
	fl.mu.Lock()
	if fl.closed {
		fl.mu.Unlock()
		c.Close()
		return false
	}
	fl.conns = append(fl.conns, c)
	fl.mu.Unlock()
	return true
}

// close closes the flow's conns. Idempotent.
func (fl *fwdFlow) close() {
	fl.mu.Lock()
	if fl.closed {
		fl.mu.Unlock()
		return
	}
	fl.closed = true
	cs := fl.conns
	fl.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// splice copies a to b and b to a until both directions ended. A clean
// end of one direction (EOF) is passed on as a half-close; an error aborts
// both.
func splice(a, b net.Conn) {
	done := make(chan struct{})
	abort := func() {
		a.Close()
		b.Close()
	}
	go func() {
		defer close(done)
		if pipe(b, a) != nil {
			abort()
		}
	}()
	if pipe(a, b) != nil {
		abort()
	}
	<-done
	abort()
}

// pipe copies src to dst, then half-closes dst.
func pipe(dst, src net.Conn) error {
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("cannot half-close")
}

// copyDatagrams moves datagrams from src to dst until either fails.
func copyDatagrams(dst, src net.Conn, idle *idleTimer) {
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		idle.touch()
		if _, err := dst.Write(buf[:n]); err != nil && !isTransientUDP(err) {
			return
		}
	}
}

// isTransientUDP reports errors a connected UDP socket returns after an
// ICMP error for an earlier datagram (port unreachable): the flow goes on.
func isTransientUDP(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !errors.Is(err, net.ErrClosed) && oe.Op == "write" && !oe.Timeout()
}

// idleTimer calls fire once nothing touched it for d.
type idleTimer struct {
	d    time.Duration
	last atomic.Int64 // UnixNano of the last touch
	fire func()

	mu sync.Mutex // guards t and stopped
	t  *time.Timer
	// stopped is set by stop and by firing.
	stopped bool
}

func startIdle(d time.Duration, fire func()) *idleTimer {
	it := &idleTimer{d: d, fire: fire}
	it.touch()
	it.mu.Lock()
	it.t = time.AfterFunc(d, it.check)
	it.mu.Unlock()
	return it
}

func (it *idleTimer) touch() { it.last.Store(time.Now().UnixNano()) }

func (it *idleTimer) check() {
	it.mu.Lock()
	if it.stopped {
		it.mu.Unlock()
		return
	}
	since := time.Since(time.Unix(0, it.last.Load()))
	if since < it.d {
		it.t.Reset(it.d - since)
		it.mu.Unlock()
		return
	}
	it.stopped = true
	it.mu.Unlock()
	it.fire()
}

func (it *idleTimer) stop() {
	it.mu.Lock()
	it.stopped = true
	it.t.Stop()
	it.mu.Unlock()
}

// idleConn is the UDP flow conn handed to a PrefixHandler: traffic keeps
// its idle timer from firing.
type idleConn struct {
	net.Conn
	idle *idleTimer
}

func (c *idleConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err == nil {
		c.idle.touch()
	}
	return n, err
}

func (c *idleConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err == nil {
		c.idle.touch()
	}
	return n, err
}
