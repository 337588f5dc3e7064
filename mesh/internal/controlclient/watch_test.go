package controlclient

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/wiremesh/wiremesh/control/api"
)

// writeLines writes each string as given (callers add "\n") and flushes.
func writeLines(w http.ResponseWriter, lines ...string) {
	rc := http.NewResponseController(w)
	for _, l := range lines {
		if _, err := io.WriteString(w, l); err != nil {
			return
		}
		_ = rc.Flush()
	}
}

// collect returns a watch callback that records events, and a getter.
func collect() (func(api.WatchEvent) error, func() []api.WatchEvent) {
	var mu sync.Mutex
	var evs []api.WatchEvent
	return func(ev api.WatchEvent) error {
			mu.Lock()
			evs = append(evs, ev)
			mu.Unlock()
			return nil
		}, func() []api.WatchEvent {
			mu.Lock()
			defer mu.Unlock()
			return append([]api.WatchEvent(nil), evs...)
		}
}

func watchClient(t *testing.T, f *fakeService, mod func(*Config)) *Client {
	c := f.client(t, mod)
	c.SetDeviceToken(f.devToken)
	return c
}

func TestWatchEventsInOrder(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		f := startFake(t, useTLS)
		var gotSince, gotZone, gotAccept string
		var hasSince bool
		f.watch = func(w http.ResponseWriter, r *http.Request) {
			gotSince, hasSince = r.URL.Query().Get("since"), r.URL.Query().Has("since")
			gotZone, gotAccept = r.PathValue("zone"), r.Header.Get("Accept")
			w.Header().Set("Content-Type", "application/x-ndjson")
			writeLines(w,
				`{"type":"snapshot","revision":5,"peers":[{"id":"a","hostname":"a","ipv4":"100.64.0.2","child_prefixes":["172.24.0.0/24"]},{"id":"b","ipv4":"100.64.0.3"}]}`+"\n",
				"\r\n", // blank line: skipped
				`{"type":"upsert","revision":6,"peer":{"id":"c","endpoints":["127.0.0.1:51820"]}}`+"\r\n",
				`{"type":"heartbeat","revision":6}`+"\n",
				`{"type":"remove","revision":7,"peer":{"id":"a"},"future_field":1}`+"\n",
			)
		}
		c := watchClient(t, f, nil)
		fn, got := collect()
		err := c.Watch(context.Background(), "lab 1", 4, fn)
		require.ErrorIs(t, err, ErrStreamEnded)
		require.ErrorContains(t, err, "controlclient: watch: ")
		require.Equal(t, "4", gotSince)
		require.Equal(t, "lab 1", gotZone)
		require.Equal(t, "application/x-ndjson", gotAccept)

		evs := got()
		require.Len(t, evs, 4)
		require.Equal(t, []string{api.EventSnapshot, api.EventUpsert, api.EventHeartbeat, api.EventRemove},
			[]string{evs[0].Type, evs[1].Type, evs[2].Type, evs[3].Type})
		require.Equal(t, []int64{5, 6, 6, 7}, []int64{evs[0].Revision, evs[1].Revision, evs[2].Revision, evs[3].Revision})
		require.Len(t, evs[0].Peers, 2)
		require.Equal(t, []netip.Prefix{netip.MustParsePrefix("172.24.0.0/24")}, evs[0].Peers[0].ChildPrefixes)
		require.Equal(t, []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:51820")}, evs[1].Peer.Endpoints)
		require.Equal(t, "a", evs[3].Peer.ID)

		// since 0 asks for a snapshot: no since parameter.
		_ = c.Watch(context.Background(), "default", 0, func(api.WatchEvent) error { return nil })
		require.False(t, hasSince)
	}
}

// testMaxLine stands in for MaxWatchLine: 16 MiB through the race detector
// takes seconds; readLine is the same code either way.
const testMaxLine = 64 << 10

func TestWatchStreamErrors(t *testing.T) {
	require.Equal(t, 16<<20, MaxWatchLine)
	c, err := New(Config{URL: "http://127.0.0.1:1"})
	require.NoError(t, err)
	require.Equal(t, MaxWatchLine, c.maxLine, "the default limit is MaxWatchLine")
	c.Close()

	hb := `{"type":"heartbeat","revision":1}` + "\n"
	tests := []struct {
		name    string
		serve   func(w http.ResponseWriter, r *http.Request)
		wantIs  error
		wantMsg string
		wantEvs int
	}{
		{name: "truncated last line", wantIs: io.ErrUnexpectedEOF, wantEvs: 1,
			serve: func(w http.ResponseWriter, r *http.Request) { writeLines(w, hb, `{"type":"ups`) }},
		{name: "connection cut", wantIs: io.ErrUnexpectedEOF, wantEvs: 1,
			serve: func(w http.ResponseWriter, r *http.Request) {
				conn, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					panic(err)
				}
				defer conn.Close()
				_, _ = brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + hb + `{"type":"upsert","rev`)
				_ = brw.Flush()
			}},
		{name: "invalid json", wantMsg: `invalid event line "not json"`, wantEvs: 1,
			serve: func(w http.ResponseWriter, r *http.Request) { writeLines(w, hb, "not json\n", hb) }},
		{name: "no type", wantMsg: `invalid event line "{\"revision\":3}": no type`,
			serve: func(w http.ResponseWriter, r *http.Request) { writeLines(w, `{"revision":3}`+"\n") }},
		{name: "oversized line", wantIs: ErrLineTooLong, wantEvs: 1,
			serve: func(w http.ResponseWriter, r *http.Request) {
				writeLines(w, hb, strings.Repeat("x", testMaxLine+1), "\n", hb)
			}},
		{name: "line at limit", wantIs: ErrStreamEnded, wantEvs: 2,
			serve: func(w http.ResponseWriter, r *http.Request) {
				pad := testMaxLine - len(`{"type":"heartbeat","revision":2,"pad":""}`)
				writeLines(w, hb, `{"type":"heartbeat","revision":2,"pad":"`+strings.Repeat("x", pad)+`"}`+"\r\n")
			}},
		{name: "service error", wantMsg: "forbidden: not your zone",
			serve: func(w http.ResponseWriter, r *http.Request) { writeErr(w, api.CodeForbidden, "not your zone") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, false)
			f.watch = tt.serve
			c := watchClient(t, f, func(cfg *Config) { cfg.maxLine = testMaxLine })
			fn, got := collect()
			err := c.Watch(context.Background(), "default", 0, fn)
			require.Error(t, err)
			require.ErrorContains(t, err, "controlclient: watch: ")
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			if tt.wantMsg != "" {
				require.ErrorContains(t, err, tt.wantMsg)
			}
			require.Len(t, got(), tt.wantEvs)
			require.Equal(t, 1, f.hits("GET /v1/zones/default/watch"), "Watch never retries")
		})
	}
}

func TestWatchAPIError(t *testing.T) {
	f := startFake(t, false)
	c := watchClient(t, f, nil)
	c.SetDeviceToken("wmd_wrong")
	err := c.Watch(context.Background(), "default", 0, func(api.WatchEvent) error { return nil })
	var ae *api.Error
	require.ErrorAs(t, err, &ae)
	require.Equal(t, api.CodeUnauthorized, ae.Code)
	require.Equal(t, 401, ae.Status)
}

func TestWatchInputErrors(t *testing.T) {
	f := startFake(t, false)
	c := f.client(t, nil)
	nop := func(api.WatchEvent) error { return nil }
	require.ErrorIs(t, c.Watch(context.Background(), "default", 0, nop), ErrNoDeviceToken)
	c.SetDeviceToken(f.devToken)
	require.ErrorContains(t, c.Watch(context.Background(), "", 0, nop), "zone is empty")
	require.ErrorContains(t, c.Watch(context.Background(), "default", -1, nop), "revision -1 is negative")
	require.Zero(t, f.totalHits())
}

// blockingWatch sends a snapshot, then nothing until the client goes away.
func blockingWatch(w http.ResponseWriter, r *http.Request) {
	writeLines(w, `{"type":"snapshot","revision":1}`+"\n")
	<-r.Context().Done()
}

func TestWatchFnErrorReturnedUnchanged(t *testing.T) {
	f := startFake(t, false)
	f.watch = blockingWatch
	c := watchClient(t, f, nil)
	errStop := errors.New("stop")
	err := c.Watch(context.Background(), "default", 0, func(api.WatchEvent) error { return errStop })
	require.Equal(t, errStop, err)
}

func TestWatchEndsPromptly(t *testing.T) {
	tests := []struct {
		name string
		stop func(cancel context.CancelFunc, c *Client)
		want error
	}{
		{name: "context cancelled", stop: func(cancel context.CancelFunc, _ *Client) { cancel() }, want: context.Canceled},
		{name: "client closed", stop: func(_ context.CancelFunc, c *Client) { c.Close() }, want: net.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, true)
			f.watch = blockingWatch
			c := watchClient(t, f, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			first := make(chan struct{}, 1)
			errc := make(chan error, 1)
			go func() {
				errc <- c.Watch(ctx, "default", 0, func(api.WatchEvent) error {
					first <- struct{}{}
					return nil
				})
			}()
			select {
			case <-first:
			case <-time.After(5 * time.Second):
				t.Fatal("no snapshot")
			}
			start := time.Now()
			tt.stop(cancel, c)
			select {
			case err := <-errc:
				require.ErrorIs(t, err, tt.want)
				require.Less(t, time.Since(start), time.Second)
			case <-time.After(5 * time.Second):
				t.Fatal("Watch did not end")
			}
		})
	}
}

func TestWatchIdleTimeout(t *testing.T) {
	f := startFake(t, false)
	f.watch = blockingWatch
	c := watchClient(t, f, func(cfg *Config) { cfg.WatchIdleTimeout = 200 * time.Millisecond })
	fn, got := collect()
	err := c.Watch(context.Background(), "default", 0, fn)
	require.ErrorIs(t, err, ErrWatchIdle)
	require.Len(t, got(), 1)
}

// TestWatchOutlivesUnaryTimeout: the stream is not bound by Config.Timeout.
func TestWatchOutlivesUnaryTimeout(t *testing.T) {
	f := startFake(t, false)
	f.watch = func(w http.ResponseWriter, r *http.Request) {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 8; i++ {
			writeLines(w, `{"type":"heartbeat","revision":1}`+"\n")
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
		}
	}
	c := watchClient(t, f, func(cfg *Config) { cfg.Timeout = 100 * time.Millisecond })
	fn, got := collect()
	err := c.Watch(context.Background(), "default", 0, fn)
	require.ErrorIs(t, err, ErrStreamEnded)
	require.Len(t, got(), 8)
}

func TestReadLine(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr error
	}{
		{name: "lines", in: "a\nbb\n", want: []string{"a\n", "bb\n"}, wantErr: io.EOF},
		{name: "at limit", in: "0123456789\r\n", want: []string{"0123456789\r\n"}, wantErr: io.EOF},
		{name: "over limit", in: "0123456789a\n", wantErr: ErrLineTooLong},
		{name: "over limit without newline", in: "0123456789abcdef", wantErr: ErrLineTooLong},
		{name: "truncated", in: "a\nb", want: []string{"a\n"}, wantErr: io.ErrUnexpectedEOF},
		{name: "empty", in: "", wantErr: io.EOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := bufio.NewReaderSize(strings.NewReader(tt.in), 16) // small buffer: lines span reads
			var got []string
			for {
				l, err := readLine(r, nil, 10)
				if err != nil {
					require.ErrorIs(t, err, tt.wantErr)
					break
				}
				got = append(got, string(l))
			}
			require.Equal(t, tt.want, got)
		})
	}
}
