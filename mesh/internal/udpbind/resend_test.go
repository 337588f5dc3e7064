package udpbind

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// message builds a WireGuard message of type typ and size with idx at off.
func message(typ uint32, size, off int, idx uint32) []byte {
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b, typ)
	binary.LittleEndian.PutUint32(b[off:], idx)
	for i := off + 4; i < size; i++ {
		b[i] = byte(i)
	}
	return b
}

func initiation(idx uint32) []byte {
	return message(msgInitiation, sizeInitiation, initiationSender, idx)
}

// fakeSends records what a resender sends.
type fakeSends struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (f *fakeSends) send(b []byte, _ *Endpoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, bytes.Clone(b))
}

func (f *fakeSends) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs)
}

func withFastResends(t *testing.T) {
	old := resendDelays
	resendDelays = []time.Duration{5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond}
	t.Cleanup(func() { resendDelays = old })
}

func TestResender(t *testing.T) {
	withFastResends(t)
	ep := newEndpoint(netip.MustParseAddrPort("127.0.0.1:5000"))
	other := newEndpoint(netip.MustParseAddrPort("127.0.0.1:5001"))
	tests := []struct {
		name    string
		answer  func(r *resender) // after the first resend; nil = never answered
		stopped bool              // resends end before the schedule does
	}{
		{"unanswered: the whole schedule", nil, false},
		{"handshake response", func(r *resender) {
			r.received([][]byte{message(msgResponse, sizeResponse, 8, 7)}, []int{sizeResponse}, 1)
		}, true},
		{"cookie reply", func(r *resender) {
			r.received([][]byte{message(msgCookieReply, sizeCookieReply, 4, 7)}, []int{sizeCookieReply}, 1)
		}, true},
		{"response for another initiation", func(r *resender) {
			r.received([][]byte{message(msgResponse, sizeResponse, 8, 8)}, []int{sizeResponse}, 1)
		}, false},
		{"data packet", func(r *resender) {
			r.received([][]byte{message(4, sizeResponse, 8, 7)}, []int{sizeResponse}, 1)
		}, false},
		{"newer initiation to the same peer", func(r *resender) {
			r.sent(initiation(9), ep, func([]byte, *Endpoint) {})
		}, true},
		{"close", func(r *resender) { r.close() }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r resender
			var f fakeSends
			msg := initiation(7)
			r.sent(msg, ep, f.send)
			r.sent(initiation(3), other, func([]byte, *Endpoint) {}) // another peer: independent
			require.Eventually(t, func() bool { return f.count() >= 1 }, 5*time.Second, time.Millisecond)
			if tt.answer != nil {
				tt.answer(&r)
			}
			at := f.count()
			require.Eventually(t, func() bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				_, ok := r.pending[7]
				return !ok
			}, 5*time.Second, time.Millisecond)
			if tt.stopped {
				require.LessOrEqual(t, f.count(), at+1, "at most a resend already under way")
			} else {
				require.Eventually(t, func() bool { return f.count() == len(resendDelays) }, 5*time.Second, time.Millisecond)
			}
			require.LessOrEqual(t, f.count(), len(resendDelays))
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, m := range f.msgs {
				require.Equal(t, msg, m, "resent unchanged")
			}
			r.close()
			require.Zero(t, r.active.Load())
		})
	}
}

func TestResendBudget(t *testing.T) {
	var r resender
	now := time.Now()
	for i := 0; i < resendBurst; i++ {
		require.True(t, r.takeLocked(now), "within the burst")
	}
	require.False(t, r.takeLocked(now), "burst spent")
	require.False(t, r.takeLocked(now.Add(time.Second/resendRate/2)), "not refilled yet")
	require.True(t, r.takeLocked(now.Add(time.Second/resendRate*2)), "refilled")
	require.True(t, r.takeLocked(now.Add(time.Hour)), "refilled")
	require.LessOrEqual(t, r.tokens, float64(resendBurst), "never above the burst")

	// A cookie reply (a responder under load) pauses every resend.
	r.active.Store(1) // received looks only while something is pending
	r.received([][]byte{message(msgCookieReply, sizeCookieReply, 4, 99)}, []int{sizeCookieReply}, 1)
	r.active.Store(0)
	require.False(t, r.paused.IsZero())
	require.False(t, r.takeLocked(time.Now()), "paused")
	require.True(t, r.takeLocked(r.paused.Add(2*time.Hour)), "pause over")
}

// TestResendOverSockets: an initiation nobody answers arrives several
// times; once a response comes back, the copies stop.
func TestResendOverSockets(t *testing.T) {
	withFastResends(t)
	a, fnsA, portA := openBind(t, 0)
	b, fnsB, portB := openBind(t, 0)
	waitA, _ := receiveAll(t, fnsA, 16)
	waitB, _ := receiveAll(t, fnsB, 16)

	toB, err := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portB))
	require.NoError(t, err)
	msg := initiation(42)
	require.NoError(t, a.Send([][]byte{msg}, toB))
	for _, got := range waitB(3) { // the original and two resends
		require.Equal(t, msg, got)
	}
	toA, err := b.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portA))
	require.NoError(t, err)
	require.NoError(t, b.Send([][]byte{message(msgResponse, sizeResponse, 8, 42)}, toA))
	waitA(1)
	require.Eventually(t, func() bool { return a.rs.active.Load() == 0 }, 5*time.Second, time.Millisecond)

	// Data and a second Open after Close are not tracked / tracked again.
	require.NoError(t, a.Send([][]byte{message(4, sizeInitiation, 4, 1)}, toB))
	require.Zero(t, a.rs.active.Load())
	require.NoError(t, a.Close())
	_, _, err = a.Open(0)
	require.NoError(t, err)
	toB, err = a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", portB))
	require.NoError(t, err)
	require.NoError(t, a.Send([][]byte{initiation(43)}, toB))
	require.Equal(t, int32(1), a.rs.active.Load())
}
