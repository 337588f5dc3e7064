package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"

	"github.com/pion/stun/v3"
)

// STUNServer is an RFC 5389 binding responder: it answers every Binding
// request with the sender's reflexive address (XOR-MAPPED-ADDRESS) and a
// FINGERPRINT, and ignores everything else.
type STUNServer struct {
	conn net.PacketConn
	log  *slog.Logger
	wg   sync.WaitGroup

	mu     sync.Mutex // guards closed
	closed bool
}

// NewSTUNServer serves STUN on conn until Close. It takes ownership of
// conn. A nil logger is quiet.
func NewSTUNServer(conn net.PacketConn, log *slog.Logger) *STUNServer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &STUNServer{conn: conn, log: log}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Addr returns the local address the responder listens on.
func (s *STUNServer) Addr() netip.AddrPort {
	if ua, ok := s.conn.LocalAddr().(*net.UDPAddr); ok {
		return ua.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(s.conn.LocalAddr().String())
	return ap
}

// Close stops the responder and closes its socket. A second Close returns
// an error wrapping net.ErrClosed.
func (s *STUNServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return &net.OpError{Op: "close", Net: "udp", Err: net.ErrClosed}
	}
	s.closed = true
	s.mu.Unlock()
	err := s.conn.Close()
	s.wg.Wait()
	return err
}

func (s *STUNServer) serve() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	req := new(stun.Message)
	resp := new(stun.Message)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return
			}
			s.log.Debug("stun: read failed", "err", err)
			continue
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok || !stun.IsMessage(buf[:n]) {
			continue
		}
		req.Reset()
		req.Raw = append(req.Raw[:0], buf[:n]...)
		if err := req.Decode(); err != nil || req.Type != stun.BindingRequest {
			continue
		}
		if req.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(req) != nil {
			continue
		}
		ap := ua.AddrPort()
		resp.Reset()
		err = resp.Build(
			stun.NewTransactionIDSetter(req.TransactionID),
			stun.BindingSuccess,
			&stun.XORMappedAddress{IP: ap.Addr().Unmap().AsSlice(), Port: int(ap.Port())},
			stun.Fingerprint,
		)
		if err != nil {
			s.log.Debug("stun: building response failed", "err", err)
			continue
		}
		if _, err := s.conn.WriteTo(resp.Raw, from); err != nil {
			s.log.Debug("stun: write failed", "to", from, "err", err)
		}
	}
}

// bindSTUN starts the service's two STUN responders (see
// Options.STUNListen and STUNAltListen) and records their advertised
// addresses: an unspecified host becomes ":port", meaning the host of the
// service URL. On error nothing stays open.
func (l *listeners) bindSTUN(ctx context.Context, o Options, log *slog.Logger) error {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", o.STUNListen)
	if err != nil {
		return fmt.Errorf("STUN listener: %w", err)
	}
	l.stun = NewSTUNServer(pc, log)
	l.stunAdvertised = advertised(l.stun.Addr())
	altListen := o.STUNAltListen
	if altListen == "off" {
		return nil
	}
	if altListen == "" {
		host, port, _ := net.SplitHostPort(o.STUNListen)
		next := "0"
		if p, err := strconv.Atoi(port); err == nil && p > 0 && p < 65535 {
			next = strconv.Itoa(p + 1)
		}
		altListen = net.JoinHostPort(host, next)
	}
	if pc, err = lc.ListenPacket(ctx, "udp", altListen); err != nil {
		l.stun.Close()
		l.stun = nil
		return fmt.Errorf("second STUN listener: %w", err)
	}
	l.stunAlt = NewSTUNServer(pc, log)
	l.stunAltAdvertised = advertised(l.stunAlt.Addr())
	return nil
}

func advertised(a netip.AddrPort) string {
	if a.Addr().IsUnspecified() {
		return ":" + strconv.Itoa(int(a.Port()))
	}
	return a.String()
}
