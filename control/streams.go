package control

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/store"
)

// errStreamSuperseded ends a device's oldest watch stream when it opens
// one more than limits.streamsPerDevice.
var errStreamSuperseded = errors.New("watch stream superseded: the device opened newer streams")

// streamSet bounds the watch streams each device holds. Opening one past
// the cap ends the device's oldest stream rather than refusing the new
// one: a member that lost its connection silently (suspend, NAT rebind)
// reconnects while the service may not notice the dead stream for many
// minutes (TCP gives up on unacknowledged data only after ~15 min), and
// the newest stream is the one a live member is reading. Either way a
// device token holds at most max streams.
type streamSet struct {
	max int

	mu       sync.Mutex // guards byDevice
	byDevice map[string][]*openStream
}

type openStream struct{ cancel context.CancelCauseFunc }

func newStreamSet(max int) *streamSet {
	return &streamSet{max: max, byDevice: make(map[string][]*openStream)}
}

// open registers a stream of device and returns its context (ended when
// the stream is superseded, or when ctx ends), the number of older
// streams it ended (0 or 1), and the release to call when it finishes.
func (ss *streamSet) open(ctx context.Context, device string) (context.Context, int, func()) {
	sctx, cancel := context.WithCancelCause(ctx)
	st := &openStream{cancel: cancel}
	ss.mu.Lock()
	list := append(ss.byDevice[device], st)
	var ended []*openStream
	for len(list) > ss.max {
		ended = append(ended, list[0])
		list = list[1:]
	}
	ss.byDevice[device] = list
	ss.mu.Unlock()
	for _, o := range ended {
		o.cancel(errStreamSuperseded)
	}
	release := func() {
		ss.mu.Lock()
		list := ss.byDevice[device]
		for i, o := range list {
			if o == st {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(ss.byDevice, device)
		} else {
			ss.byDevice[device] = list
		}
		ss.mu.Unlock()
		cancel(nil)
	}
	return sctx, len(ended), release
}

// count returns how many streams device holds.
func (ss *streamSet) count(device string) int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byDevice[device])
}

// watchRules applies the watch stream's own rules once its device token is
// accepted: no request body; at most limits.streamsPerDevice streams per
// device (the oldest ends); and no read deadline, since the stream lives
// as long as the member reads it (each event and heartbeat has its own
// write deadline, watchWriteTimeout, so a member that stops reading is
// dropped).
func (s *server) watchRules(next deviceHandler) deviceHandler {
	return func(w http.ResponseWriter, r *http.Request, d store.Device) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			writeError(w, apiErr(api.CodeBadRequest, "the watch stream takes no request body"))
			return
		}
		ctx, ended, release := s.streams.open(r.Context(), d.ID)
		defer release()
		if ended > 0 {
			s.log.InfoContext(ctx, "watch stream limit: ended the device's oldest stream",
				"device", d.ID, "zone", d.Zone, "max", s.cfg.limits.streamsPerDevice, "from", s.clientAddr(r).String())
		}
		_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
		next(w, r.WithContext(ctx), d)
	}
}
