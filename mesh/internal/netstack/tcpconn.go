package netstack

import (
	"context"
	"errors"
	"net"
	"net/netip"

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
func (n *Net) dialTCP(ctx context.Context, addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*gonet.TCPConn, error) {
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
	return gonet.NewTCPConn(&wq, unpinnedEndpoint{ep}), nil
}

// listenTCP is gonet.ListenTCP with an unpinnedEndpoint.
func (n *Net) listenTCP(addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber) (*gonet.TCPListener, error) {
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
	return gonet.NewTCPListener(n.stack, &wq, unpinnedEndpoint{ep}), nil
}

func tcpAddr(a tcpip.FullAddress) *net.TCPAddr {
	ip, _ := netip.AddrFromSlice(a.Addr.AsSlice())
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, a.Port))
}
