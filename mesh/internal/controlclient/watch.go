package controlclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
)

// MaxWatchLine is the longest watch stream line (one event) Watch accepts.
const MaxWatchLine = 16 << 20

var (
	// ErrLineTooLong is returned by Watch for a line over MaxWatchLine.
	ErrLineTooLong = errors.New("watch event line longer than 16 MiB")
	// ErrStreamEnded is returned by Watch when the service ends the stream
	// cleanly (at a line boundary), e.g. when it shuts down.
	ErrStreamEnded = errors.New("watch stream ended by the service")
	// ErrWatchIdle is returned by Watch when nothing arrived for
	// Config.WatchIdleTimeout.
	ErrWatchIdle = errors.New("watch stream idle: no event or heartbeat within the idle timeout")
)

// Watch opens GET /v1/zones/{zone}/watch?since=REV (device token; since 0
// asks for a snapshot) on one connection and calls fn for every event, in
// stream order, heartbeats included. fn runs on the caller's goroutine;
// the next line is read only after it returns.
//
// Watch never retries: it always returns a non-nil error, and the caller
// reconnects with the last revision it saw. It returns fn's error
// unchanged; otherwise an error wrapped as "controlclient: watch: ...":
// the context's cause when ctx is done (net.ErrClosed after Close),
// ErrStreamEnded, io.ErrUnexpectedEOF for a truncated last line,
// ErrLineTooLong, ErrWatchIdle, a JSON error for an invalid line, an
// *api.Error for a non-2xx answer, or the transport error.
func (c *Client) Watch(ctx context.Context, zone string, since int64, fn func(api.WatchEvent) error) error {
	fail := func(err error) error { return fmt.Errorf("controlclient: watch: %w", err) }
	if zone == "" {
		return fail(errors.New("zone is empty"))
	}
	if since < 0 {
		return fail(fmt.Errorf("revision %d is negative", since))
	}
	tok := c.DeviceToken()
	if tok == "" {
		return fail(ErrNoDeviceToken)
	}
	ctx, cancel, err := c.opCtx(ctx)
	if err != nil {
		return fail(err)
	}
	defer cancel(nil)

	path := "/v1/zones/" + url.PathEscape(zone) + "/watch"
	if since > 0 {
		path += "?since=" + strconv.FormatInt(since, 10)
	}
	idx, base := c.replicas.current()
	a := &attempt{idx: idx, base: base}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return fail(err)
	}
	c.setHeaders(req.Header, tok)
	req.Header.Set("Accept", "application/x-ndjson")

	// The idle timer cancels the request when no line arrives in time; it
	// is paused while fn runs.
	idle := newIdleTimer(c.idleTimeout, func() { cancel(ErrWatchIdle) })
	defer idle.stop()

	resp, err := c.stream.Do(req)
	if err != nil {
		err = c.causeOr(ctx, err)
		c.failed(a, nil, err)
		return fail(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		c.failed(a, resp, nil)
		return fail(readAPIError(resp))
	}
	c.log.Debug("controlclient: watching", "zone", zone, "since", since)
	return c.readEvents(ctx, resp.Body, a, idle, fn, fail)
}

// readEvents reads a watch stream's lines and calls fn for each event. It
// returns fn's error unchanged, or why the stream ended wrapped by fail;
// a stream that broke, ended or went idle moves the client on to the next
// replica (a's replica failed).
func (c *Client) readEvents(ctx context.Context, body io.Reader, a *attempt, idle *idleTimer,
	fn func(api.WatchEvent) error, fail func(error) error) error {
	br := bufio.NewReaderSize(body, 8<<10) // lines longer than this are assembled by readLine
	var line []byte
	for {
		var err error
		line, err = readLine(br, line[:0], c.maxLine)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				err = context.Cause(ctx) // closed, cancelled, or ErrWatchIdle
			case err == io.EOF:
				err = ErrStreamEnded
			}
			if !errors.Is(err, ErrLineTooLong) {
				// The replica went away, or hangs: the caller's next Watch
				// resumes on another one.
				c.failed(a, nil, err)
			}
			return fail(err)
		}
		idle.pause()
		text := bytes.TrimRight(line, "\r\n")
		if len(text) == 0 {
			idle.resume()
			continue // blank keep-alive line
		}
		var ev api.WatchEvent
		if err := json.Unmarshal(text, &ev); err != nil {
			return fail(fmt.Errorf("invalid event line %q: %w", snippet(text), err))
		}
		if ev.Type == "" {
			return fail(fmt.Errorf("invalid event line %q: no type", snippet(text)))
		}
		if err := fn(ev); err != nil {
			return err
		}
		if cap(line) > 1<<20 {
			line = nil // do not keep a huge buffer for the next small lines
		}
		idle.resume()
	}
}

// readLine appends the next '\n'-terminated line of r to buf. It fails
// with ErrLineTooLong as soon as the line exceeds max bytes (not counting
// its line end), io.EOF at a clean end, io.ErrUnexpectedEOF when the
// stream ends inside a line.
func readLine(r *bufio.Reader, buf []byte, max int) ([]byte, error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if len(bytes.TrimRight(chunk, "\r\n"))+len(buf) > max {
			return nil, ErrLineTooLong
		}
		buf = append(buf, chunk...)
		switch {
		case err == nil:
			return buf, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(buf) == 0:
			return nil, io.EOF
		case err == io.EOF:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// idleTimer calls fn when it runs for d without being paused; d <= 0
// disables it.
type idleTimer struct {
	d time.Duration
	t *time.Timer
}

func newIdleTimer(d time.Duration, fn func()) *idleTimer {
	it := &idleTimer{d: d}
	if d > 0 {
		it.t = time.AfterFunc(d, fn)
	}
	return it
}

func (it *idleTimer) pause() {
	if it.t != nil {
		it.t.Stop()
	}
}

func (it *idleTimer) resume() {
	if it.t != nil {
		it.t.Reset(it.d)
	}
}

func (it *idleTimer) stop() { it.pause() }
