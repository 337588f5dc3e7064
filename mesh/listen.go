package mesh

import (
	"errors"
	"net"
	"net/netip"
	"sync"
)

// listenAll listens for TCP on port at every address of addrs on the host
// network stack and merges the connections into one listener (see
// listenEach).
func listenAll(addrs []netip.Addr, port uint16) (net.Listener, error) {
	return listenEach(addrs, port, func(ap netip.AddrPort) (net.Listener, error) {
		return net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	})
}

// listenEach listens for TCP on port at every address of addrs with listen
// and merges the connections into one listener. Port 0: the first listener
// picks a port and the others use the same. listen must return listeners
// whose Addr is a *net.TCPAddr.
func listenEach(addrs []netip.Addr, port uint16, listen func(netip.AddrPort) (net.Listener, error)) (net.Listener, error) {
	m := &multiListener{conns: make(chan net.Conn), done: make(chan struct{})}
	for _, a := range addrs {
		l, err := listen(netip.AddrPortFrom(a, port))
		if err != nil {
			for _, l := range m.ls {
				l.Close()
			}
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).AddrPort().Port()
		m.ls = append(m.ls, l)
	}
	if len(m.ls) == 1 {
		return m.ls[0], nil
	}
	for _, l := range m.ls {
		m.wg.Add(1)
		go m.accept(l)
	}
	return m, nil
}

// multiListener merges the connections of several listeners. Accept
// returns net.ErrClosed after Close.
type multiListener struct {
	ls    []net.Listener
	conns chan net.Conn
	done  chan struct{} // closed by Close
	once  sync.Once
	wg    sync.WaitGroup // accept goroutines
}

func (m *multiListener) accept(l net.Listener) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		select {
		case m.conns <- c:
		case <-m.done:
			c.Close()
			return
		}
	}
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed}
	}
}

func (m *multiListener) Close() error {
	err := error(&net.OpError{Op: "close", Net: "tcp", Addr: m.Addr(), Err: net.ErrClosed})
	m.once.Do(func() {
		err = nil
		close(m.done)
		for _, l := range m.ls {
			l.Close()
		}
		m.wg.Wait()
	})
	return err
}

// Addr returns the address of the first listener (the IPv4 tunnel address).
func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }
