package proxy

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// UDP ASSOCIATE (RFC 1928 section 7). The proxy opens a UDP socket on the
// address the client reached it at and answers with its port. Datagrams
// from the client's address, each with a SOCKS5 UDP header naming its
// destination, go to that destination through Config.Dial ("udp": one
// mesh socket per destination, at most maxUDPDests); replies come back
// with the header naming their source. Fragmented datagrams, datagrams
// from other addresses and datagrams to destinations Dial refuses are
// dropped. The association lasts as long as the client's TCP connection.

// maxUDPDests bounds the destinations of one association.
const maxUDPDests = 64

// maxDatagram is the largest datagram relayed.
const maxDatagram = 64 << 10

// associate serves a UDP ASSOCIATE request on c (negotiated already).
func (s *SOCKS5) associate(c net.Conn) {
	local, ok := c.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok || !ok2 {
		writeReply(c, replyGeneralFailure, netip.AddrPort{})
		return
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP, Zone: local.Zone})
	if err != nil {
		s.c.log.Debug("proxy: socks5: udp associate", "err", err)
		writeReply(c, replyGeneralFailure, netip.AddrPort{})
		return
	}
	if !s.c.track(pc) {
		pc.Close()
		return
	}
	defer s.c.untrack(pc)
	if err := writeReply(c, replySucceeded, pc.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		pc.Close()
		return
	}
	c.SetDeadline(time.Time{})
	r := &udpRelay{s: s, pc: pc, clientIP: remote.AddrPort().Addr().Unmap(), dsts: map[string]net.Conn{}}
	tcpDone := make(chan struct{})
	go func() {
		defer close(tcpDone)
		io.Copy(io.Discard, c) // until the client ends the association
		pc.Close()
	}()
	r.run()
	c.Close()
	<-tcpDone
}

// udpRelay is one association.
type udpRelay struct {
	s        *SOCKS5
	pc       *net.UDPConn
	clientIP netip.Addr
	client   netip.AddrPort      // set by the first datagram
	dsts     map[string]net.Conn // by target; used by run only
	wg       sync.WaitGroup      // the destinations' readers
}

// run relays the client's datagrams until pc is closed, then closes the
// destinations' sockets and waits for their readers.
func (r *udpRelay) run() {
	defer func() {
		for _, d := range r.dsts {
			d.Close()
		}
		r.wg.Wait()
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := r.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() != r.clientIP || r.client.IsValid() && from != r.client {
			continue // not the client
		}
		r.client = from
		target, payload, ok := parseUDPHeader(buf[:n])
		if !ok {
			continue
		}
		d := r.dest(target)
		if d == nil {
			continue
		}
		d.Write(payload)
	}
}

// dest returns the mesh socket for target, dialling it the first time;
// nil when it cannot be dialled or the association has too many.
func (r *udpRelay) dest(target string) net.Conn {
	if d, ok := r.dsts[target]; ok {
		return d
	}
	if len(r.dsts) >= maxUDPDests {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.s.c.cfg.DialTimeout)
	defer cancel()
	d, err := r.s.c.cfg.Dial(ctx, "udp", target)
	if err != nil {
		r.s.c.log.Debug("proxy: socks5: udp: dial failed", "target", target, "err", err)
		return nil
	}
	r.dsts[target] = d
	src, _ := d.RemoteAddr().(*net.UDPAddr)
	var from netip.AddrPort
	if src != nil {
		from = src.AddrPort()
	}
	client := r.client
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.readReplies(d, from, client)
	}()
	return d
}

// readReplies sends what d receives to the client, with a header naming
// from, until d is closed.
func (r *udpRelay) readReplies(d net.Conn, from, client netip.AddrPort) {
	hdr := udpHeader(from)
	buf := make([]byte, len(hdr)+maxDatagram)
	copy(buf, hdr)
	for {
		n, err := d.Read(buf[len(hdr):])
		if err != nil {
			return
		}
		r.pc.WriteToUDPAddrPort(buf[:len(hdr)+n], client)
	}
}

// parseUDPHeader splits a client datagram into its destination and
// payload; ok is false for a fragment or a malformed header.
func parseUDPHeader(b []byte) (target string, payload []byte, ok bool) {
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
		return "", nil, false // reserved bytes, or a fragment
	}
	var host string
	rest := b[4:]
	switch b[3] {
	case atypIPv4, atypIPv6:
		n := 4
		if b[3] == atypIPv6 {
			n = 16
		}
		if len(rest) < n {
			return "", nil, false
		}
		a, _ := netip.AddrFromSlice(rest[:n])
		host, rest = a.Unmap().String(), rest[n:]
	case atypDomain:
		if len(rest) < 1 || len(rest) < 1+int(rest[0]) {
			return "", nil, false
		}
		host, rest = string(rest[1:1+int(rest[0])]), rest[1+int(rest[0]):]
	default:
		return "", nil, false
	}
	if len(rest) < 2 {
		return "", nil, false
	}
	port := binary.BigEndian.Uint16(rest)
	return net.JoinHostPort(host, strconv.Itoa(int(port))), rest[2:], true
}

// udpHeader is the SOCKS5 UDP header naming from.
func udpHeader(from netip.AddrPort) []byte {
	b := []byte{0, 0, 0}
	a := from.Addr().Unmap()
	if a.Is6() {
		b = append(b, atypIPv6)
	} else {
		b = append(b, atypIPv4)
		if !a.Is4() {
			a = netip.IPv4Unspecified()
		}
	}
	b = append(b, a.AsSlice()...)
	return binary.BigEndian.AppendUint16(b, from.Port())
}
