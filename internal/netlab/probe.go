package netlab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultProbeTimeout bounds Ping and DialTCP when their context has no
// deadline.
const DefaultProbeTimeout = 10 * time.Second

const (
	pingAttempt = time.Second            // like `ping -c1 -W1`
	dialAttempt = 2 * time.Second        // per connection attempt
	dialBackoff = 100 * time.Millisecond // pause after a fast failure (refused, unreachable)
	bannerTag   = "netlab-tcp"
)

// Ping sends ICMP echo requests from h to dst (IPv4 or IPv6), one at a
// time, each waiting up to 1 s for its reply (like `ping -c1 -W1`), until a
// reply arrives or ctx ends (DefaultProbeTimeout if ctx has no deadline).
// It uses a raw socket created inside the namespace; no ping binary needed.
func (h *Host) Ping(ctx context.Context, dst netip.Addr) error {
	if !dst.IsValid() {
		return fmt.Errorf("netlab: ping from %s: invalid address %q", h.name, dst)
	}
	dst = dst.Unmap()
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	network, laddr := "ip4:icmp", "0.0.0.0"
	if dst.Is6() {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	var conn net.PacketConn
	if err := h.Do(func() (err error) {
		conn, err = net.ListenPacket(network, laddr)
		return err
	}); err != nil {
		return fmt.Errorf("netlab: ping %s from %s: %w", dst, h.name, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	deadline, _ := ctx.Deadline()
	lastErr := context.DeadlineExceeded
	// Checking the clock as well as ctx: the context's timer may not have
	// fired yet, and an attempt past the deadline would only replace the
	// real cause with "i/o timeout".
	for seq := uint16(1); ctx.Err() == nil && time.Until(deadline) > 0; seq++ {
		attemptEnd := time.Now().Add(pingAttempt)
		if deadline.Before(attemptEnd) {
			attemptEnd = deadline
		}
		err := pingOnce(conn, dst, id, seq, attemptEnd)
		if err == nil {
			return nil
		}
		lastErr = err
		// A fast failure (no route) waits out the attempt before retrying.
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(attemptEnd)):
		}
	}
	return fmt.Errorf("netlab: ping %s from %s: no reply in time: %w", dst, h.name, lastErr)
}

// pingOnce sends one echo request and waits until end for its reply.
func pingOnce(conn net.PacketConn, dst netip.Addr, id, seq uint16, end time.Time) error {
	typ, replyType := byte(8), byte(0)
	if dst.Is6() {
		typ, replyType = 128, 129 // the kernel fills in the ICMPv6 checksum
	}
	msg := make([]byte, 8+16)
	msg[0] = typ
	binary.BigEndian.PutUint16(msg[4:], id)
	binary.BigEndian.PutUint16(msg[6:], seq)
	copy(msg[8:], "netlab-ping-data")
	if dst.Is4() {
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if err := conn.SetDeadline(end); err != nil {
		return err
	}
	if _, err := conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		// A raw socket sees all ICMP of the namespace: keep only our reply.
		src, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if !ok || src.Unmap() != dst || n < 8 || buf[0] != replyType {
			continue
		}
		if binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
			return nil
		}
	}
}

// checksum is the Internet checksum (RFC 1071).
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Banner is what a [Host.ServeTCP] server says first on a connection.
type Banner struct {
	Host   string         // name of the serving Host
	Local  netip.AddrPort // the server's side of the connection
	Remote netip.AddrPort // the client as the server sees it (after any NAT)
}

func (b Banner) String() string {
	return fmt.Sprintf("%s host=%s local=%s remote=%s", bannerTag, b.Host, b.Local, b.Remote)
}

func parseBanner(line string) (Banner, error) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != bannerTag {
		return Banner{}, fmt.Errorf("not a netlab banner: %q", line)
	}
	var b Banner
	for _, kv := range f[1:] {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "host":
			b.Host = v
		case "local":
			b.Local, err = netip.ParseAddrPort(v)
		case "remote":
			b.Remote, err = netip.ParseAddrPort(v)
		default:
			err = fmt.Errorf("unknown field %q", k)
		}
		if err != nil {
			return Banner{}, fmt.Errorf("parse banner %q: field %s=%q: %w", line, k, v, err)
		}
	}
	return b, nil
}

// DialTCP opens a TCP connection from h to a [Host.ServeTCP] server at dst,
// reads its banner and checks that a line written comes back echoed,
// retrying until that works or ctx ends (DefaultProbeTimeout if ctx has no
// deadline). Each attempt is bounded to 2 s.
func (h *Host) DialTCP(ctx context.Context, dst netip.AddrPort) error {
	_, err := h.DialTCPBanner(ctx, dst)
	return err
}

// DialTCPBanner is DialTCP returning the server's banner, which tells who
// answered and from which address the server saw the connection.
func (h *Host) DialTCPBanner(ctx context.Context, dst netip.AddrPort) (Banner, error) {
	if !dst.IsValid() {
		return Banner{}, fmt.Errorf("netlab: dial from %s: invalid address %q", h.name, dst)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	deadline, _ := ctx.Deadline()
	lastErr := context.DeadlineExceeded
	for ctx.Err() == nil && time.Until(deadline) > 0 { // see Ping for the clock check
		actx, acancel := context.WithTimeout(ctx, dialAttempt)
		b, err := h.dialOnce(actx, dst)
		acancel()
		if err == nil {
			return b, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
		case <-time.After(dialBackoff):
		}
	}
	return Banner{}, fmt.Errorf("netlab: dial tcp %s from %s: %w", dst, h.name, lastErr)
}

func (h *Host) dialOnce(ctx context.Context, dst netip.AddrPort) (Banner, error) {
	var c net.Conn
	if err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	}); err != nil {
		return Banner{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return Banner{}, fmt.Errorf("read banner: %w", err)
	}
	b, err := parseBanner(strings.TrimSpace(line))
	if err != nil {
		return Banner{}, err
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	want := hex.EncodeToString(nonce[:]) + "\n"
	if _, err := io.WriteString(c, want); err != nil {
		return Banner{}, fmt.Errorf("write echo probe: %w", err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return Banner{}, fmt.Errorf("read echo: %w", err)
	}
	if got != want {
		return Banner{}, fmt.Errorf("echo mismatch: sent %q, got %q", want, got)
	}
	return b, nil
}

// ServeTCP listens on addr inside h (port 0 picks one) until t's cleanup
// and returns the bound address. Each connection first gets a one-line
// banner (see [Banner]) and then has everything it sends echoed back.
// It fails t if it cannot listen.
func (h *Host) ServeTCP(t testing.TB, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	if !addr.IsValid() {
		t.Fatalf("netlab: ServeTCP in %s: invalid address %q", h.name, addr)
	}
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("netlab: ServeTCP %s in %s: %v", addr, h.name, err)
	}
	s := &tcpServer{host: h.name, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Go(s.acceptLoop)
	t.Cleanup(s.close)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// tcpServer is the banner+echo server behind ServeTCP.
type tcpServer struct {
	host string
	ln   net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex // guards conns and closed
	conns  map[net.Conn]bool
	closed bool
}

func (s *tcpServer) acceptLoop() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // transient (e.g. aborted handshake)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Go(func() { s.serve(c) })
	}
}

func (s *tcpServer) serve(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	b := Banner{
		Host:   s.host,
		Local:  unmap(c.LocalAddr().(*net.TCPAddr).AddrPort()),
		Remote: unmap(c.RemoteAddr().(*net.TCPAddr).AddrPort()),
	}
	if _, err := io.WriteString(c, b.String()+"\n"); err != nil {
		return
	}
	_, _ = io.Copy(c, c)
}

func (s *tcpServer) close() {
	s.mu.Lock()
	s.closed = true
	_ = s.ln.Close()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// withDefaultTimeout bounds ctx by DefaultProbeTimeout if it has no deadline.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultProbeTimeout)
}

// unmap turns ::ffff:a.b.c.d (a dual-stack listener's view of IPv4) into a.b.c.d.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
