package netstack

import (
	"sync"
	"time"
)

// deadline is an I/O deadline of a socket of ours (UDPConn's writes,
// PingConn's reads): a channel closed when it passes. A call that waits on
// done() sees every later set: moving the deadline keeps the channel (its
// timer is reset), clearing it leaves the channel open, a time in the past
// closes it.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // closed when the deadline has passed
}

func (d *deadline) init() { d.ch = make(chan struct{}) }

// done returns the channel of the deadline in force: a call that waits on
// it ends when that deadline passes, or when a later set moves it into the
// past.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// set replaces the deadline; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		// The timer fired (its func closes or closed d.ch).
		d.ch = make(chan struct{})
	}
	d.timer = nil
	select {
	case <-d.ch: // closed by an earlier set to the past
		d.ch = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.ch)
		return
	}
	ch := d.ch
	d.timer = time.AfterFunc(wait, func() { close(ch) })
}

// stop stops the timer (the socket is closing).
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}
