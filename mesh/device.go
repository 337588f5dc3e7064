package mesh

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/mesh/internal/magicsock"
)

// holdDelay is how long a node holds back towards a new peer marked Hold
// (see shouldHold): the peer is configured without its endpoint, so this
// side cannot initiate a handshake (not even for application traffic), and
// without persistent keepalive. The peer initiates; this side answers and
// learns the endpoint from that. When both sides initiate at the same
// moment instead, the initiations cross, each side drops the other's answer
// and both wait for WireGuard's 5s retry. After holdDelay the endpoint and
// keepalive are set anyway (the peer may be unable to reach this side, e.g.
// behind NAT), except that an endpoint learnt from a completed handshake is
// kept.
const holdDelay = 3 * time.Second

// wgDevice is a wireguard-go device over a tun.Device: our netstack
// (userspacePlane) or a TUN device (kernelPlane). Its configuration goes
// through the device's UAPI text protocol, which stays internal: callers
// use applyPeers and stats.
type wgDevice struct {
	dev  *device.Device
	ms   *magicsock.Conn // the bind: paths to peers through NATs (nat.go)
	port uint16
	priv api.Key // restored by repairDrift
	pub  api.Key
	log  *slog.Logger

	// mu guards the fields below and serializes configuration.
	mu      sync.Mutex
	closed  bool
	want    map[api.Key]wgPeer    // as asked by the last applyPeers
	applied map[api.Key]wgPeer    // as last written to the device
	pending map[api.Key]time.Time // new peers held back until then (see holdDelay)
	timer   *time.Timer           // re-syncs when a hold or a restart is due

	guard    *crossGuard          // between dev and its bind (see crossWindow)
	restarts map[api.Key]*restart // replaced peers (see restartRetries)
	trim     trimState            // idle peers trimmed from dev (trim.go)
}

// newBind returns the UDP transport of a node's WireGuard device: a
// magicsock.Conn (paths to peers through NATs, the service's relay) over
// our udpbind (one dual-stack socket, sendmmsg/recvmmsg, UDP GSO/GRO)
// with batches of batchSize packets, the tun device's batch size
// (wireguard-go sizes its buffers by the larger of the two). Every data
// plane gets its bind here.
func newBind(batchSize int, cfg magicsock.Config) *magicsock.Conn {
	cfg.Batch = batchSize
	return magicsock.New(cfg)
}

// pacingTun is a tun device that paces how many packets it lets into the
// WireGuard device (netstack.Net): the device must send through the Bind
// PaceBind returns.
type pacingTun interface {
	PaceBind(conn.Bind) conn.Bind
}

// startDevice creates the WireGuard device over tdev and bind with the
// private key and brings it up listening on UDP port (0 = random). On
// error tdev is closed. The device sends through a crossGuard around bind
// (see crossWindow). Peers idle for idle are trimmed from the device (see
// trim.go); 0 never trims.
func startDevice(tdev tun.Device, bind *magicsock.Conn, priv api.Key, port uint16, idle time.Duration, logger *slog.Logger) (*wgDevice, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	guard := guardCrossing(bind, logger)
	guard.valid = bind.IsInitiation
	var wgBind conn.Bind = guard
	if p, ok := tdev.(pacingTun); ok { // userspace: see netstack.Net.PaceBind
		wgBind = p.PaceBind(guard)
	}
	bufSize := device.MaxMessageSize
	if s, ok := tdev.(interface{ MessageBufferSize() int }); ok { // userspace
		bufSize = s.MessageBufferSize()
	}
	trim := trimState{acts: map[api.Key]*peerAct{}, quiet: map[api.Key]bool{}, asleep: map[api.Key]bool{}}
	if idle > 0 {
		trim.idle = max(idle, minPeerIdleTimeout)
		trim.tun = &activityTUN{Device: tdev}
		tdev = trim.tun
	}
	dev := device.NewDeviceSized(tdev, wgBind, wgLogger(logger), bufSize)
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(priv[:]), port)
	if err := dev.IpcSet(cfg); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure device: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("bring device up on UDP port %d: %w", port, err)
	}
	d := &wgDevice{
		log:      logger,
		dev:      dev,
		ms:       bind,
		priv:     priv,
		pub:      api.PublicKey(priv),
		want:     map[api.Key]wgPeer{},
		applied:  map[api.Key]wgPeer{},
		pending:  map[api.Key]time.Time{},
		guard:    guard,
		restarts: map[api.Key]*restart{},
		trim:     trim,
	}
	st, err := d.stats()
	if err != nil {
		dev.Close()
		return nil, err
	}
	d.port = st.listenPort
	if d.trim.tun != nil {
		d.trim.tun.wake = d.wakeKey
		bind.SetWake(d.wakeKey)
		d.mu.Lock() // onTrimTimer reads the timer under d.mu
		d.trim.timer = time.AfterFunc(d.trimEvery(), d.onTrimTimer)
		d.mu.Unlock()
	}
	return d, nil
}

// close stops the device, its bind (UDP sockets) and its tun device (the
// netstack, or the TUN interface). Idempotent.
func (d *wgDevice) close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.trim.timer != nil {
		d.trim.timer.Stop()
	}
	d.mu.Unlock()
	d.dev.Close()
}

// applyPeers makes the device's peers equal to want with the fewest
// changes (see diffPeers). Peers that did not change are not touched, so
// their sessions survive.
func (d *wgDevice) applyPeers(want map[api.Key]wgPeer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("configure peers: %w", net.ErrClosed)
	}
	d.want = maps.Clone(want)
	d.ms.SetPeers(magicPeers(want))
	now := time.Now()
	d.setActsLocked(now)
	return d.syncLocked(now)
}

// syncLocked writes d.want, minus what is held back from new peers (see
// holdDelay) and the idle peers trimmed (see trim.go), to the device, replacing peers that restarted (see
// restartRetries), and arms the timer for the next hold or restart due.
func (d *wgDevice) syncLocked(now time.Time) error {
	eff := make(map[api.Key]wgPeer, len(d.want))
	have := maps.Clone(d.applied)
	var next time.Time
	var stats *devStats
	for k, w := range d.want {
		if _, trimmed := d.trim.asleep[k]; trimmed {
			continue
		}
		if d.trim.quiet[k] {
			w.Keepalive = 0
		}
		_, known := d.applied[k]
		due, held := d.pending[k]
		woken := d.trim.acts[k] != nil && d.trim.acts[k].wasTrimmed
		if _, known := have[k]; woken && !known && !w.Endpoint.IsValid() {
			// Added again after a trim: keep the endpoint the device
			// had learnt (see peerAct.learned).
			w.Endpoint = d.trim.acts[k].learned
		}
		if !held && !known && !woken && w.Hold && w.Endpoint.IsValid() {
			due, held = now.Add(holdDelay), true
			d.pending[k] = due
		}
		switch {
		case held && now.Before(due):
			w.Endpoint, w.Keepalive = netip.AddrPort{}, 0
			if next.IsZero() || due.Before(next) {
				next = due
			}
		case held:
			delete(d.pending, k)
			if stats == nil {
				st, err := d.stats()
				if err != nil {
					return err
				}
				stats = &st
			}
			if h, ok := have[k]; ok && !stats.peers[k].lastHandshake.IsZero() {
				// Keep the endpoint the handshake taught the device.
				h.Endpoint = w.Endpoint
				have[k] = h
			}
		}
		eff[k] = w
	}
	for k := range d.pending {
		if _, ok := d.want[k]; !ok {
			delete(d.pending, k)
		}
	}
	replace, due, err := d.restartsLocked(have, eff, now)
	if err != nil {
		return err
	}
	next = earliest(next, due)
	if !next.IsZero() {
		if d.timer == nil {
			d.timer = time.AfterFunc(next.Sub(now), d.onTimer)
		} else {
			d.timer.Reset(next.Sub(now))
		}
	}
	cfg, err := d.replaceConfig(replace, have, eff)
	if err != nil {
		return err
	}
	if cfg == "" {
		d.applied = eff
		return nil
	}
	if err := d.dev.IpcSet(cfg); err != nil {
		// The device may be half-configured: forget what we believe so that
		// the next apply rewrites every peer in full.
		d.applied = map[api.Key]wgPeer{}
		return fmt.Errorf("configure peers: %w", err)
	}
	d.applied = eff
	return nil
}

func (d *wgDevice) onTimer() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if err := d.syncLocked(time.Now()); err != nil {
		d.log.Warn("mesh: configuring held-back peers", "err", err)
	}
}

// devStats is the device's runtime state, parsed from UAPI "get".
type devStats struct {
	listenPort uint16
	peers      map[api.Key]peerStats
}

type peerStats struct {
	endpoint      netip.AddrPort
	path          string // PathDirect, PathRelay or "" (see PeerStatus.Path)
	lastHandshake time.Time
	rxBytes       uint64
	txBytes       uint64
	asleep        bool // trimmed from the device (trim.go): the rest is as it was then
}

// peerStats returns the peers' runtime state; nil after close or when the
// device cannot be read.
func (d *wgDevice) peerStats() map[api.Key]peerStats {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil
	}
	st, err := d.stats()
	if err != nil {
		d.log.Debug("mesh: reading the device state", "err", err)
		return nil
	}
	paths := d.ms.Paths()
	d.mu.Lock()
	for k, a := range d.trim.acts {
		if d.trim.asleep[k] {
			st.peers[k] = a.base
		} else if ps, ok := st.peers[k]; ok && a.wasTrimmed {
			st.peers[k] = a.base.plus(ps)
		}
	}
	d.mu.Unlock()
	for k, ps := range st.peers {
		// WireGuard's endpoint is an address when the path is direct
		// (chosen by probing, or learnt from the peer's packets).
		if ps.endpoint.IsValid() {
			ps.path = PathDirect
		} else {
			ps.path = paths[k].Path
		}
		st.peers[k] = ps
	}
	return st.peers
}

// stats reads the device's runtime state. It does not take d.mu.
func (d *wgDevice) stats() (devStats, error) {
	s, err := d.dev.IpcGet()
	if err != nil {
		return devStats{}, fmt.Errorf("read device state: %w", err)
	}
	return parseStats(s)
}

// parseStats parses the UAPI "get" output.
func parseStats(s string) (devStats, error) {
	st := devStats{peers: map[api.Key]peerStats{}}
	var cur *peerStats
	var curKey api.Key
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.lastHandshake = time.Unix(sec, nsec)
			}
			st.peers[curKey] = *cur
		}
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "listen_port":
			var p uint64
			p, err = strconv.ParseUint(v, 10, 16)
			st.listenPort = uint16(p)
		case "public_key":
			flush()
			var b []byte
			b, err = hex.DecodeString(v)
			if err == nil && len(b) != 32 {
				err = fmt.Errorf("%d bytes", len(b))
			}
			copy(curKey[:], b)
			cur, sec, nsec = &peerStats{}, 0, 0
		case "endpoint":
			if cur != nil {
				// A peer without a direct path has a magicsock name here.
				cur.endpoint, _ = netip.ParseAddrPort(v)
			}
		case "last_handshake_time_sec":
			sec, err = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, err = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.rxBytes, err = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.txBytes, err = strconv.ParseUint(v, 10, 64)
			}
		}
		if err != nil {
			return devStats{}, fmt.Errorf("device state: line %q: %w", sc.Text(), err)
		}
	}
	flush()
	return st, nil
}

// wgLogger routes wireguard-go's logs to slog at debug level (errors at
// warn).
func wgLogger(l *slog.Logger) *device.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug("wireguard: " + fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			l.Warn("wireguard: " + fmt.Sprintf(format, args...))
		},
	}
}
