package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// SOCKS5 constants (RFC 1928).
const (
	socksVersion = 5

	methodNoAuth       = 0x00
	methodNoAcceptable = 0xff

	cmdConnect      = 0x01
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	replySucceeded          = 0x00
	replyGeneralFailure     = 0x01
	replyNetworkUnreachable = 0x03
	replyHostUnreachable    = 0x04
	replyConnectionRefused  = 0x05
	replyCommandUnsupported = 0x07
	replyAddrTypeUnsupp     = 0x08
)

// SOCKS5 is a SOCKS5 proxy server (RFC 1928): CONNECT and UDP ASSOCIATE,
// without authentication. Clients offering only other authentication
// methods (username/password, GSSAPI) are told that none is acceptable
// (0xFF); BIND is answered "command not supported".
// Addresses may be IPv4, IPv6 or a name (the zone's member names, resolved
// by Config.Dial): use socks5h:// with curl to send the name.
type SOCKS5 struct {
	c *conns
}

// NewSOCKS5 returns a SOCKS5 server with cfg. Serve it on a listener.
func NewSOCKS5(cfg Config) (*SOCKS5, error) {
	c, err := newConns(cfg)
	if err != nil {
		return nil, err
	}
	return &SOCKS5{c: c}, nil
}

// Serve accepts connections on ln and serves them until ln fails or the
// server is closed; it then returns net.ErrClosed (after Close) or the
// listener's error. ln is closed on return.
func (s *SOCKS5) Serve(ln net.Listener) error {
	return s.c.serve(ln, s.handle)
}

// Close closes the listeners and every proxied connection, and returns
// once the goroutines serving them are done. A second Close returns
// net.ErrClosed.
func (s *SOCKS5) Close() error {
	if !s.c.close() {
		return fmt.Errorf("proxy: close: %w", net.ErrClosed)
	}
	return nil
}

// serve runs handle for each connection ln accepts.
func (s *conns) serve(ln net.Listener, handle func(net.Conn)) error {
	if !s.addListener(ln) {
		ln.Close()
		return net.ErrClosed
	}
	defer s.wg.Done()
	defer ln.Close()
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.lns, ln)
			s.mu.Unlock()
			if closed {
				return net.ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		if !s.track(c) {
			c.Close()
			return net.ErrClosed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.untrack(c)
			defer c.Close()
			handle(c)
		}()
	}
}

// handle negotiates with one client, dials and splices.
func (s *SOCKS5) handle(c net.Conn) {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReader(c)
	cmd, target, err := s.negotiate(br, c)
	if err != nil {
		s.c.log.Debug("proxy: socks5: refused", "client", c.RemoteAddr(), "err", err)
		return
	}
	if cmd == cmdUDPAssociate {
		s.associate(c)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	up, err := s.c.dial(ctx, target)
	if err != nil {
		s.c.log.Debug("proxy: socks5: dial failed", "client", c.RemoteAddr(), "target", target, "err", err)
		writeReply(c, socksReply(classify(err)), netip.AddrPort{})
		return
	}
	defer s.c.untrack(up)
	var bound netip.AddrPort
	if ta, ok := up.LocalAddr().(*net.TCPAddr); ok {
		bound = ta.AddrPort()
	}
	if err := writeReply(c, replySucceeded, bound); err != nil {
		up.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if n := br.Buffered(); n > 0 {
		// Data the client sent right after its request (optimistic).
		b, _ := br.Peek(n)
		if _, err := up.Write(b); err != nil {
			up.Close()
			return
		}
	}
	splice(c, up)
}

// negotiate reads the method selection and the request, and returns the
// command and its target "host:port" (for UDP ASSOCIATE, where the client
// will send from, often 0.0.0.0:0: not used). A request the server
// refuses has been answered.
func (s *SOCKS5) negotiate(r *bufio.Reader, w io.Writer) (cmd byte, target string, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, "", fmt.Errorf("reading methods: %w", err)
	}
	if hdr[0] != socksVersion {
		return 0, "", fmt.Errorf("version %d, not SOCKS5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return 0, "", fmt.Errorf("reading methods: %w", err)
	}
	if !slices.Contains(methods, methodNoAuth) {
		w.Write([]byte{socksVersion, methodNoAcceptable})
		return 0, "", fmt.Errorf("client offers only authentication methods %v; this proxy has none", methods)
	}
	if _, err := w.Write([]byte{socksVersion, methodNoAuth}); err != nil {
		return 0, "", err
	}
	var req [4]byte
	if _, err := io.ReadFull(r, req[:]); err != nil {
		return 0, "", fmt.Errorf("reading request: %w", err)
	}
	if req[0] != socksVersion {
		return 0, "", fmt.Errorf("request version %d, not SOCKS5", req[0])
	}
	host, err := readAddr(r, req[3])
	if err != nil {
		if errors.Is(err, errAddrType) {
			writeReply(w, replyAddrTypeUnsupp, netip.AddrPort{})
		}
		return 0, "", err
	}
	var port [2]byte
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return 0, "", fmt.Errorf("reading request: %w", err)
	}
	if req[1] != cmdConnect && req[1] != cmdUDPAssociate {
		writeReply(w, replyCommandUnsupported, netip.AddrPort{})
		return 0, "", fmt.Errorf("command %d not supported (only CONNECT and UDP ASSOCIATE)", req[1])
	}
	return req[1], net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(port[:])))), nil
}

var errAddrType = errors.New("address type not supported")

// readAddr reads DST.ADDR of type atyp.
func readAddr(r *bufio.Reader, atyp byte) (string, error) {
	switch atyp {
	case atypIPv4, atypIPv6:
		b := make([]byte, 4)
		if atyp == atypIPv6 {
			b = make([]byte, 16)
		}
		if _, err := io.ReadFull(r, b); err != nil {
			return "", fmt.Errorf("reading address: %w", err)
		}
		a, _ := netip.AddrFromSlice(b)
		return a.Unmap().String(), nil
	case atypDomain:
		n, err := r.ReadByte()
		if err != nil {
			return "", fmt.Errorf("reading address: %w", err)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", fmt.Errorf("reading address: %w", err)
		}
		return string(b), nil
	}
	return "", fmt.Errorf("%w: %d", errAddrType, atyp)
}

// writeReply writes a reply with code and the bound address (0.0.0.0:0
// when unknown).
func writeReply(w io.Writer, code byte, bound netip.AddrPort) error {
	b := []byte{socksVersion, code, 0}
	a := bound.Addr().Unmap()
	switch {
	case a.Is4():
		b = append(b, atypIPv4)
		b = append(b, a.AsSlice()...)
	case a.Is6():
		b = append(b, atypIPv6)
		b = append(b, a.AsSlice()...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	b = binary.BigEndian.AppendUint16(b, bound.Port())
	_, err := w.Write(b)
	return err
}

func socksReply(f failure) byte {
	switch f {
	case failNoRoute:
		return replyNetworkUnreachable
	case failHost:
		return replyHostUnreachable
	case failRefused:
		return replyConnectionRefused
	case failTimeout:
		// No answer in time: the host did not answer (RFC 1928's "TTL
		// expired" is about routing loops).
		return replyHostUnreachable
	}
	return replyGeneralFailure
}
