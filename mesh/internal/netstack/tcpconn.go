package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// TCP endpoints that do not keep the caller's last written buffer.
//
// gVisor's TCP endpoint reads each write through an io.LimitedReader that
// it caches in the endpoint for the next write, still pointing at the
// caller's payload (gonet's bytes.Reader over the written slice). Every
// connection thus kept its last written buffer reachable while it lived,
// and a closed one through TIME_WAIT, a minute: with 64 KiB writes, 64 KiB
// per connection, a heap that grew with the number of transfers
// (mesh.TestHeapFlatOverTransfers). unpinnedEndpoint hands the endpoint a
// payload of its own and empties it when Write returns.

// maxListenBacklog is gonet.ListenTCP's backlog (Linux's somaxconn).
const maxListenBacklog = 4096

// unpinnedEndpoint is a TCP endpoint whose Write keeps no reference to the
// caller's payload; Accept returns such endpoints too.
type unpinnedEndpoint struct {
	tcpip.Endpoint
}

// payload forwards to the caller's Payloader until Write returns.
type payload struct {
	p tcpip.Payloader
}

func (w *payload) Read(b []byte) (int, error) {
	if w.p == nil {
		return 0, errors.New("netstack: payload read after Write returned")
	}
	return w.p.Read(b)
}

func (w *payload) Len() int {
	if w.p == nil {
		return 0
	}
	return w.p.Len()
}

func (e unpinnedEndpoint) Write(p tcpip.Payloader, opts tcpip.WriteOptions) (int64, tcpip.Error) {
	w := &payload{p: p}
	n, err := e.Endpoint.Write(w, opts)
	w.p = nil // the endpoint's cached reader may keep w, but w keeps nothing
	return n, err
}

func (e unpinnedEndpoint) Accept(peerAddr *tcpip.FullAddress) (tcpip.Endpoint, *waiter.Queue, tcpip.Error) {
	ep, wq, err := e.Endpoint.Accept(peerAddr)
	if ep != nil {
		ep = unpinnedEndpoint{ep}
	}
	return ep, wq, err
}

// dialTCP is gonet.DialContextTCP with an unpinnedEndpoint.
func (n *Net) dialTCP(ctx context.Context, addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*TCPConn, error) {
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	entry, writable := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, err
	}
	terr = ep.Connect(addr)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, ctx.Err()
		case <-writable:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "connect", Net: "tcp", Addr: tcpAddr(addr), Err: errors.New(terr.String())}
	}
	return newTCPConn(&wq, unpinnedEndpoint{ep}), nil
}

// listenTCP is gonet.ListenTCP with an unpinnedEndpoint.
func (n *Net) listenTCP(addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*TCPListener, error) {
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	if terr := ep.Bind(addr); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: tcpAddr(addr), Err: errors.New(terr.String())}
	}
	if terr := ep.Listen(maxListenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: tcpAddr(addr), Err: errors.New(terr.String())}
	}
	return &TCPListener{gonet.NewTCPListener(n.stack, &wq, unpinnedEndpoint{ep})}, nil
}

func tcpAddr(a tcpip.FullAddress) *net.TCPAddr {
	ip, _ := netip.AddrFromSlice(a.Addr.AsSlice())
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, a.Port))
}

// TCPConn is a TCP connection of the stack: a gonet.TCPConn whose deadline
// errors wrap os.ErrDeadlineExceeded, as net.Conn requires. gonet reports an
// expired deadline with an error of its own ("i/o timeout", Timeout true)
// that does not, so errors.Is(err, os.ErrDeadlineExceeded) failed on a
// mesh connection where it holds on a net.Dial one.
type TCPConn struct {
	*gonet.TCPConn
}

var _ net.Conn = (*TCPConn)(nil)

func newTCPConn(wq *waiter.Queue, ep tcpip.Endpoint) *TCPConn {
	return &TCPConn{gonet.NewTCPConn(wq, ep)}
}

// Read implements net.Conn.Read.
func (c *TCPConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	if err != nil {
		err = deadlineError(err)
	}
	return n, err
}

// Write implements net.Conn.Write.
func (c *TCPConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	if err != nil {
		err = deadlineError(err)
	}
	return n, err
}

// TCPListener is a gonet.TCPListener whose Accept returns a *TCPConn (as a
// net.Conn). gonet's listener has no deadline, so Accept has no timeout.
type TCPListener struct {
	*gonet.TCPListener
}

var _ net.Listener = (*TCPListener)(nil)

// Accept implements net.Listener.Accept.
func (l *TCPListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*gonet.TCPConn); ok {
		return &TCPConn{tc}, nil
	}
	return c, nil
}

// deadlineError returns err, or for gonet's timeout error a *net.OpError
// like it whose Err is os.ErrDeadlineExceeded: its message ("i/o timeout")
// and Timeout() are the same.
func deadlineError(err error) error {
	oe, ok := err.(*net.OpError)
	if !ok {
		return err
	}
	if t, ok := oe.Err.(interface{ Timeout() bool }); !ok || !t.Timeout() || errors.Is(oe.Err, os.ErrDeadlineExceeded) {
		return err
	}
	return &net.OpError{Op: oe.Op, Net: oe.Net, Source: oe.Source, Addr: oe.Addr, Err: os.ErrDeadlineExceeded}
}
