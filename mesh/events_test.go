package mesh

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// A reader that does not read never blocks the emitter: events beyond the
// buffer are dropped and counted.
func TestEventHubDropsForSlowReaders(t *testing.T) {
	var h eventHub
	slow, cancelSlow := h.subscribe()
	fast, cancelFast := h.subscribe()
	defer cancelFast()
	got := 0
	for i := 0; i < eventBuffer+44; i++ {
		h.emit(Event{Type: PeerAdded})
		select {
		case <-fast:
			got++
		default:
		}
	}
	require.Equal(t, eventBuffer+44, got)
	require.Len(t, slow, eventBuffer)
	require.Equal(t, uint64(44), h.dropped.Load())

	cancelSlow()
	cancelSlow() // idempotent
	n := 0
	for range slow {
		n++
	}
	require.Equal(t, eventBuffer, n, "buffered events stay readable, then the channel is closed")

	h.close()
	_, ok := <-fast
	require.False(t, ok)
	late, _ := h.subscribe()
	_, ok = <-late
	require.False(t, ok, "subscribing after close gives a closed channel")
	h.emit(Event{Type: PeerRemoved}) // no panic after close
}
