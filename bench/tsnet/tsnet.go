package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/bench/measure"
	"tailscale.com/client/local"
	"tailscale.com/derp/derpserver"
	"tailscale.com/ipn/ipnstate"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/logtail"
	"tailscale.com/net/netns"
	"tailscale.com/net/stun"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/key"
	"tailscale.com/types/logger"
)

// tsnetEnv is the environment a tsnet child runs with: no log upload; no
// port mapping (UPnP, NAT-PMP and PCP would talk to the LAN's gateway); a
// panic rather than a connection to Tailscale's own control plane; no
// wait for a default route; and no local interface addresses among a
// member's endpoints, so that disco pings go to 127.0.0.1 only (the one
// endpoint the local STUN server reports), as wiremesh's do.
var tsnetEnv = []string{
	"TS_NO_LOGS_NO_SUPPORT=true",
	"TS_DISABLE_PORTMAPPER=1",
	"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
	"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
	"TS_DEBUG_OMIT_LOCAL_ADDRS=1",
}

// envSet reports whether the process started with tsnetEnv.
func envSet() bool {
	for _, kv := range tsnetEnv {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v {
			return false
		}
	}
	return true
}

// tsnetSystem is Tailscale's in-process test control server
// (tstest/integration/testcontrol) with a DERP server and a STUN server of
// its own on 127.0.0.1, and tsnet members: what tsnet's own tests run,
// nothing reaching past loopback.
type tsnetSystem struct {
	dir     string
	derp    *derpserver.Server
	derpWeb *httptest.Server
	stun    net.PacketConn
	control *httptest.Server
}

func newTsnet() (_ *tsnetSystem, err error) {
	if captivePortalBuilt {
		return nil, errors.New("build with -tags ts_omit_captiveportal: netcheck's captive-portal probe would contact controlplane.tailscale.com whenever STUN answers slower than 200 ms")
	}
	if !envSet() {
		return nil, fmt.Errorf("the environment lacks one of %q", tsnetEnv)
	}
	logtail.Disable()       // tsnet starts logtail outside tests whatever TS_NO_LOGS_NO_SUPPORT says
	netns.SetEnabled(false) // as tsnet's tests: plain sockets, no SO_MARK
	s := &tsnetSystem{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.dir, err = os.MkdirTemp("", "compare-tsnet-"); err != nil {
		return nil, err
	}
	if s.stun, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("stun: %w", err)
	}
	go serveSTUN(s.stun)
	s.derp = derpserver.New(key.NewNode(), logger.Discard)
	s.derpWeb = httptest.NewUnstartedServer(derpserver.Handler(s.derp))
	s.derpWeb.Config.ErrorLog = logger.StdLogger(logger.Discard)
	s.derpWeb.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	s.derpWeb.StartTLS()
	derpMap := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{1: {
		RegionID:   1,
		RegionCode: "test",
		Nodes: []*tailcfg.DERPNode{{
			Name:             "t1",
			RegionID:         1,
			HostName:         "127.0.0.1",
			IPv4:             "127.0.0.1",
			IPv6:             "none",
			STUNPort:         s.stun.LocalAddr().(*net.UDPAddr).Port,
			DERPPort:         s.derpWeb.Listener.Addr().(*net.TCPAddr).Port,
			InsecureForTests: true,
			STUNTestIP:       "127.0.0.1",
		}},
	}}}
	ctl := &testcontrol.Server{
		DERPMap:   derpMap,
		DNSConfig: &tailcfg.DNSConfig{Proxied: true},
		Logf:      logger.Discard,
		// The defaults testcontrol gives every node, and no captive-portal
		// detection by LocalBackend either.
		DefaultNodeCapabilities: &tailcfg.NodeCapMap{
			tailcfg.CapabilityHTTPS:                       nil,
			tailcfg.CapabilityFileSharing:                 nil,
			tailcfg.NodeAttrDisableCaptivePortalDetection: nil,
		},
	}
	s.control = httptest.NewUnstartedServer(ctl)
	ctl.HTTPTestServer = s.control
	s.control.Start()
	return s, nil
}

// serveSTUN answers STUN binding requests on pc until it is closed.
func serveSTUN(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		txid, err := stun.ParseBindingRequest(buf[:n])
		if !stun.Is(buf[:n]) || err != nil {
			continue
		}
		src := from.(*net.UDPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		_, _ = pc.WriteTo(stun.Response(txid, src), from)
	}
}

func (s *tsnetSystem) Join(ctx context.Context, hostname string) (measure.Member, error) {
	dir, err := os.MkdirTemp(s.dir, hostname+"-")
	if err != nil {
		return nil, err
	}
	srv := &tsnet.Server{
		Dir:        dir,
		ControlURL: s.control.URL,
		Hostname:   hostname,
		Store:      new(mem.Store),
		Ephemeral:  true,
		Logf:       logger.Discard,
		UserLogf:   logger.Discard,
	}
	st, err := srv.Up(ctx)
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("tsnet.Up %s: %w", hostname, err)
	}
	m := &tsnetMember{s: srv}
	for _, ip := range st.TailscaleIPs {
		if ip.Is4() {
			m.ip = ip
		}
	}
	if m.lc, err = srv.LocalClient(); err != nil || !m.ip.IsValid() {
		srv.Close()
		return nil, fmt.Errorf("tsnet %s: no local client or IPv4 address (%v): %w", hostname, st.TailscaleIPs, err)
	}
	return m, nil
}

// leave closes m; testcontrol cannot delete a node, so the members that
// left stay in later members' netmaps (offline, never configured in
// WireGuard since no traffic goes to them).
func (s *tsnetSystem) Leave(_ context.Context, m measure.Member) error { return m.Close() }

func (s *tsnetSystem) Close() {
	if s.control != nil {
		s.control.Close()
	}
	if s.derpWeb != nil {
		s.derpWeb.CloseClientConnections()
		s.derpWeb.Close()
	}
	if s.derp != nil {
		s.derp.Close()
	}
	if s.stun != nil {
		s.stun.Close()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

type tsnetMember struct {
	s  *tsnet.Server
	lc *local.Client
	ip netip.Addr
}

func (m *tsnetMember) Addr() netip.Addr { return m.ip }

func (m *tsnetMember) Listen(port uint16) (net.Listener, error) {
	return m.s.Listen("tcp", fmt.Sprintf(":%d", port))
}

func (m *tsnetMember) Dial(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	return m.s.Dial(ctx, "tcp", to.String())
}

// peers returns m's peers, nil on error.
func (m *tsnetMember) peers(ctx context.Context) []*ipnstate.PeerStatus {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := m.lc.Status(ctx)
	if err != nil {
		return nil
	}
	out := make([]*ipnstate.PeerStatus, 0, len(st.Peer))
	for _, p := range st.Peer {
		out = append(out, p)
	}
	return out
}

// ready: every peer has a direct path (CurAddr), not DERP.
func (m *tsnetMember) Ready(ctx context.Context, peers int) bool {
	ps := m.peers(ctx)
	if len(ps) != peers {
		return false
	}
	for _, p := range ps {
		if p.CurAddr == "" {
			return false
		}
	}
	return true
}

func (m *tsnetMember) Idle(ctx context.Context, peers int) bool { return len(m.peers(ctx)) == peers }

func (m *tsnetMember) Close() error { return m.s.Close() }
