package control

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// dialRelay opens a relay connection with a device token.
func (e *env) dialRelay(ctx context.Context, token string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	ws, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.ts.URL, "http")+api.RelayPath, &websocket.DialOptions{HTTPHeader: h})
	if err == nil {
		ws.SetReadLimit(api.RelayMaxMessage)
		e.t.Cleanup(func() { ws.CloseNow() })
	}
	return ws, resp, err
}

func (e *env) mustDialRelay(token string) *websocket.Conn {
	e.t.Helper()
	ws, _, err := e.dialRelay(e.t.Context(), token)
	require.NoError(e.t, err)
	return ws
}

func relayMsg(t testing.TB, key api.Key, ds ...string) []byte {
	msg := append([]byte(nil), key[:]...)
	for _, d := range ds {
		var err error
		msg, err = api.AppendRelayDatagram(msg, []byte(d))
		require.NoError(t, err)
	}
	return msg
}

// readRelay reads one message and returns its key and datagrams.
func readRelay(t testing.TB, ws *websocket.Conn) (api.Key, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	typ, msg, err := ws.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageBinary, typ)
	var ds []string
	k, err := api.ParseRelayMessage(msg, func(d []byte) { ds = append(ds, string(d)) })
	require.NoError(t, err)
	return k, ds
}

func TestRelayForwardsWithinZoneOnly(t *testing.T) {
	e := newEnv(t)
	e.createZone("other", false)
	tok := e.joinToken(api.DefaultZone, true)
	a, ra := e.mustRegister(tok, "a")
	b, rb := e.mustRegister(tok, "b")
	c, rc := e.mustRegister(e.joinToken("other", true), "c")
	wa, wb, wc := e.mustDialRelay(ra.DeviceToken), e.mustDialRelay(rb.DeviceToken), e.mustDialRelay(rc.DeviceToken)
	ctx := t.Context()

	// a to b: b gets it with a's key, whatever key a wrote.
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, relayMsg(t, b.pub, "one", "two")))
	k, ds := readRelay(t, wb)
	require.Equal(t, a.pub, k)
	require.Equal(t, []string{"one", "two"}, ds)
	require.NoError(t, wb.Write(ctx, websocket.MessageBinary, relayMsg(t, a.pub, "back")))
	k, ds = readRelay(t, wa)
	require.Equal(t, b.pub, k)
	require.Equal(t, []string{"back"}, ds)

	dropped := counterValue(t, e.srv.relay.m.messages.WithLabelValues("unknown_destination"))
	// a to c (another zone), to an unknown key and to itself: dropped, counted.
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, relayMsg(t, c.pub, "leak")))
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, relayMsg(t, newDevice().pub, "nobody")))
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, relayMsg(t, a.pub, "self")))
	// c cannot reach a either, even knowing its key.
	require.NoError(t, wc.Write(ctx, websocket.MessageBinary, relayMsg(t, a.pub, "cross")))
	require.Eventually(t, func() bool {
		return counterValue(t, e.srv.relay.m.messages.WithLabelValues("unknown_destination")) == dropped+4
	}, 10*time.Second, 5*time.Millisecond)

	// What each receives next is a legitimate message: nothing leaked before it.
	_, r2 := e.mustRegister(e.joinToken("other", true), "c2")
	w2 := e.mustDialRelay(r2.DeviceToken)
	require.NoError(t, w2.Write(ctx, websocket.MessageBinary, relayMsg(t, c.pub, "sentinel")))
	_, ds = readRelay(t, wc)
	require.Equal(t, []string{"sentinel"}, ds)
	require.NoError(t, wb.Write(ctx, websocket.MessageBinary, relayMsg(t, a.pub, "sentinel")))
	_, ds = readRelay(t, wa)
	require.Equal(t, []string{"sentinel"}, ds)
}

func TestRelayRefusesBadCredentials(t *testing.T) {
	e := newEnv(t)
	for _, tok := range []string{"", "wmd_00000000000000000000000000000000", testAdmin} {
		_, resp, err := e.dialRelay(t.Context(), tok)
		require.Error(t, err, "token %q", tok)
		require.NotNil(t, resp)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "token %q", tok)
	}
}

func TestRelayClosesOnOversizedOrMalformed(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	b, rb := e.mustRegister(tok, "b")
	_, ra := e.mustRegister(tok, "a")
	wa := e.mustDialRelay(ra.DeviceToken)
	wb := e.mustDialRelay(rb.DeviceToken)
	ctx := t.Context()

	// Malformed (truncated datagram): dropped and counted, the connection stays.
	bad := relayMsg(t, b.pub, "x")
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, bad[:len(bad)-1]))
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, relayMsg(t, b.pub, "ok")))
	_, ds := readRelay(t, wb)
	require.Equal(t, []string{"ok"}, ds)

	big := make([]byte, api.RelayMaxMessage+1)
	copy(big, b.pub[:])
	require.NoError(t, wa.Write(ctx, websocket.MessageBinary, big))
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, _, err := wa.Read(rctx)
	require.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(err), "err %v", err)
}

func TestRelayConnectionLimit(t *testing.T) {
	e := newEnv(t)
	_, ra := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	var conns []*websocket.Conn
	for range relayConnsPerDevice {
		conns = append(conns, e.mustDialRelay(ra.DeviceToken))
	}
	_, resp, err := e.dialRelay(t.Context(), ra.DeviceToken)
	require.Error(t, err)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	conns[0].Close(websocket.StatusNormalClosure, "")
	require.Eventually(t, func() bool {
		ws, _, err := e.dialRelay(t.Context(), ra.DeviceToken)
		if err == nil {
			ws.CloseNow()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "a closed connection frees its place")
}

func TestRelayEndsForDeletedDevice(t *testing.T) {
	e := newEnv(t)
	_, ra := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	wa := e.mustDialRelay(ra.DeviceToken)
	code, _ := e.do("DELETE", "/v1/devices/"+ra.DeviceID, e.admin, nil)
	require.Equal(t, http.StatusNoContent, code)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, _, err := wa.Read(ctx)
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "the connection ended, not the wait")
}

func TestRelayClose(t *testing.T) {
	e := newEnv(t)
	_, ra := e.mustRegister(e.joinToken(api.DefaultZone, true), "a")
	wa := e.mustDialRelay(ra.DeviceToken)
	require.NoError(t, e.srv.Close())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, _, err := wa.Read(ctx)
	require.Error(t, err)
	require.NoError(t, ctx.Err())
	_, resp, err := e.dialRelay(t.Context(), ra.DeviceToken)
	require.Error(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// TestRelayQueueBoundCountsCapacity: what a receiver that does not read
// can pin is bounded by relayQueueBytes in memory held (the capacity of
// the queued buffers), not in message length. Small messages in pooled
// buffers, or in a buffer an earlier large message grew, fill the queue
// long before relayQueueMessages.
func TestRelayQueueBoundCountsCapacity(t *testing.T) {
	pooled := func(n int) *[]byte {
		bp := relayBufs.Get().(*[]byte)
		*bp = append((*bp)[:0], make([]byte, n)...)
		return bp
	}
	grown := func(n int) *[]byte {
		b := make([]byte, n, 256<<10)
		return &b
	}
	for _, tt := range []struct {
		name string
		buf  func(n int) *[]byte
		full bool // some messages do not fit
	}{
		{"pooled buffers", pooled, false},
		{"grown buffers", grown, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rl := newRelay(slog.New(slog.DiscardHandler), prometheus.NewRegistry(), relayConfig{})
			t.Cleanup(rl.close)
			from := &relayConn{rk: relayKey{"z", newDevice().pub}}
			to := &relayConn{rk: relayKey{"z", newDevice().pub}, out: make(chan *[]byte, relayQueueMessages)}
			rl.byKey[to.rk] = to
			for range relayQueueMessages {
				rl.forward(from, to.rk, tt.buf(len(api.Key{})+40))
			}
			var held int64
			for len(to.out) > 0 {
				bp := <-to.out
				held += int64(cap(*bp))
			}
			require.LessOrEqual(t, held, int64(relayQueueBytes), "memory pinned by the queue of a receiver that does not read")
			require.Equal(t, held, to.queued.Load(), "the bound counts what the queue holds")
			if tt.full {
				require.Positive(t, counterValue(t, rl.m.messages.WithLabelValues("queue_full")))
			}
		})
	}
}
