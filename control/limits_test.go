package control

import (
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// stallBody opens a raw connection, sends head (request line and headers
// announcing a body) and one byte of body, and returns how long the
// service took to close the connection. It fails the test if the
// connection is still open after wait.
func stallBody(t *testing.T, e *env, head string, wait time.Duration) time.Duration {
	t.Helper()
	c, err := net.Dial("tcp", e.ts.Listener.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	start := time.Now()
	_, err = io.WriteString(c, head+"\r\n{")
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(wait)))
	_, err = io.Copy(io.Discard, c) // a response may come first; then EOF
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s with a stalled body", wait)
	}
	return time.Since(start)
}

// Issue 12 item 3: a request that announces a body and stalls is cut off
// after the body deadline on every route, unauthenticated or not.
func TestStalledBodyTimesOut(t *testing.T) {
	const deadline = 300 * time.Millisecond
	e := newEnv(t, func(c *serverConfig) { c.limits.bodyTimeout = deadline })
	tok := e.joinToken(api.DefaultZone, true)
	for name, head := range map[string]string{
		"register":          "POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\nContent-Length: 100000\r\n",
		"register no token": "POST /v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n",
		"patch no token":    "PATCH /v1/devices/self HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n",
		"admin":             "POST /v1/zones HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + testAdmin + "\r\nContent-Length: 100000\r\n",
		"info":              "GET /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n",
		"chunked":           "POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\nTransfer-Encoding: chunked\r\n\r\n100",
	} {
		t.Run(name, func(t *testing.T) {
			took := stallBody(t, e, head, 20*time.Second)
			require.GreaterOrEqual(t, took, deadline-50*time.Millisecond, "closed by the deadline, not before")
		})
	}
	// The service still answers.
	code, _ := e.do("GET", "/v1/info", "", nil)
	require.Equal(t, http.StatusOK, code)
}

// The watch stream has no body and outlives the body deadline; a watch
// request with a body is refused.
func TestWatchOutlivesBodyDeadline(t *testing.T) {
	const deadline = 200 * time.Millisecond
	e := newEnv(t, func(c *serverConfig) {
		c.limits.bodyTimeout = deadline
		c.HeartbeatInterval = 50 * time.Millisecond
	})
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a")
	s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, s.next().Type)
	// Heartbeats keep coming well past the deadline.
	end := time.Now().Add(4 * deadline)
	for beats := 0; time.Now().Before(end) || beats < 5; beats++ {
		select {
		case ev := <-s.events:
			require.Equal(t, api.EventHeartbeat, ev.Type)
		case err := <-s.done:
			t.Fatalf("watch stream ended after %d heartbeats: %v", beats, err)
		case <-time.After(10 * time.Second):
			t.Fatal("no heartbeat within 10s")
		}
	}

	code, ae := e.call("GET", "/v1/zones/default/watch", reg.DeviceToken, "{}", nil)
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, ae.Message, "no request body")
}

// Issue 12 item 4 (streams): a device token holds at most
// streamsPerDevice watch streams; one more ends the oldest.
func TestWatchStreamsPerDeviceCapped(t *testing.T) {
	e := newEnv(t)
	tok := e.joinToken(api.DefaultZone, true)
	_, reg := e.mustRegister(tok, "a")
	_, other := e.mustRegister(tok, "b")
	max := e.srv.cfg.limits.streamsPerDevice
	require.Equal(t, defaultStreamsPerDevice, max)
	var streams []*stream
	for range max {
		s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
		require.Equal(t, api.EventSnapshot, s.next().Type)
		streams = append(streams, s)
	}
	otherStream := e.watch(api.DefaultZone, other.DeviceToken, 0)
	require.Equal(t, api.EventSnapshot, otherStream.next().Type)

	for i := range 3 * max { // each new stream ends the oldest one left
		s := e.watch(api.DefaultZone, reg.DeviceToken, 0)
		require.Equal(t, api.EventSnapshot, s.next().Type)
		select {
		case <-streams[i].done:
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d still open after %d newer ones", i, max)
		}
		streams = append(streams, s)
		require.Equal(t, max, e.srv.streams.count(reg.DeviceID))
	}
	// The live ones and the other device's stream still get events.
	e.mustRegister(tok, "c")
	for _, s := range append(streams[len(streams)-max:], otherStream) {
		require.Equal(t, api.EventUpsert, s.next().Type)
	}
	// Closing streams frees their slots.
	for _, s := range streams[len(streams)-max:] {
		s.cancel()
	}
	require.Eventually(t, func() bool { return e.srv.streams.count(reg.DeviceID) == 0 }, 10*time.Second, 10*time.Millisecond)
}
