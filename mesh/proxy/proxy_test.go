package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	xproxy "golang.org/x/net/proxy"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/proxy"
	"github.com/wiremesh/wiremesh/meshtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a service, a member "server-a" serving TCP echo on port 7 and
// HTTP(S) on ports 80/443 of its tunnel address, and a member "client-b"
// whose proxies listen on 127.0.0.1.
type fixture struct {
	a, b      *mesh.Node
	tlsConfig *tls.Config // trusts a's HTTPS server
	socks     string      // SOCKS5 proxy address
	http      string      // HTTP proxy address
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s, mesh.WithHostname("server-a"))
	b := meshtest.Join(t, s, mesh.WithHostname("client-b"))
	meshtest.WaitPeers(t, b, 1)
	f := &fixture{a: a, b: b}
	serveEcho(t, a)
	f.tlsConfig = serveHTTP(t, a)

	socks, err := proxy.NewSOCKS5(proxy.Config{Dial: b.Dial, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	f.socks = serveOn(t, socks.Serve, socks.Close)
	hp, err := proxy.NewHTTP(proxy.Config{Dial: b.Dial, DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	f.http = serveOn(t, hp.Serve, hp.Close)
	return f
}

// serveOn serves on a fresh loopback listener until the test ends and
// checks that Serve returns net.ErrClosed after Close.
func serveOn(t *testing.T, serve func(net.Listener) error, closeFn func() error) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, closeFn())
		require.ErrorIs(t, <-done, net.ErrClosed)
		require.ErrorIs(t, closeFn(), net.ErrClosed)
	})
	return ln.Addr().String()
}

func serveEcho(t *testing.T, n *mesh.Node) {
	l, err := n.Listen("tcp", ":7")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
}

// serveHTTP serves "hello from server-a" over HTTP on port 80 and HTTPS on
// port 443 of n, and returns a TLS config trusting the HTTPS server.
func serveHTTP(t *testing.T, n *mesh.Node) *tls.Config {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from server-a %s", r.URL.Path)
	})
	l80, err := n.Listen("tcp", ":80")
	require.NoError(t, err)
	plain := &httptest.Server{Listener: l80, Config: &http.Server{Handler: h}}
	plain.Start()
	t.Cleanup(plain.Close)
	l443, err := n.Listen("tcp", ":443")
	require.NoError(t, err)
	secure := &httptest.Server{Listener: l443, Config: &http.Server{Handler: h}}
	secure.StartTLS()
	t.Cleanup(secure.Close)
	c := secure.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	c.ServerName = "example.com" // httptest's certificate has no tunnel address
	return c
}

func echo(t *testing.T, c net.Conn) {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err := c.Write([]byte("ping through the mesh\n"))
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ping through the mesh\n", line)
}

func TestSOCKS5(t *testing.T) {
	f := newFixture(t)
	d, err := xproxy.SOCKS5("tcp", f.socks, nil, xproxy.Direct)
	require.NoError(t, err)
	cd := d.(xproxy.ContextDialer)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("address", func(t *testing.T) {
		c, err := cd.DialContext(ctx, "tcp", net.JoinHostPort(f.a.Addr().String(), "7"))
		require.NoError(t, err)
		echo(t, c)
	})
	t.Run("member name", func(t *testing.T) {
		c, err := cd.DialContext(ctx, "tcp", "server-a:7")
		require.NoError(t, err)
		echo(t, c)
	})
	for _, tc := range []struct{ name, addr, want string }{
		// Outside the mesh: refused, never dialled on the host network
		// (the proxy itself listens on 127.0.0.1).
		{"outside the mesh", "192.0.2.1:80", "network unreachable"},
		{"host network", f.socks, "network unreachable"},
		{"unknown name", "nobody:80", "host unreachable"},
		{"refused", net.JoinHostPort(f.a.Addr().String(), "9"), "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cd.DialContext(ctx, "tcp", tc.addr)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// socksExchange sends raw bytes to the SOCKS5 proxy and returns what it
// answers before closing the connection.
func socksExchange(t *testing.T, addr string, send []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Write(send)
	require.NoError(t, err)
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	return got
}

func TestSOCKS5Refusals(t *testing.T) {
	f := newFixture(t)
	a4 := f.a.Addr().As4()
	for _, tc := range []struct {
		name string
		send []byte
		want []byte
	}{
		{"username/password only", []byte{5, 1, 2}, []byte{5, 0xff}},
		{"GSSAPI and username/password", []byte{5, 2, 1, 2}, []byte{5, 0xff}},
		{"not SOCKS5", []byte{4, 1, 0, 80, 1, 2, 3, 4, 0}, []byte{}},
		{"BIND", append([]byte{5, 1, 0, 5, 2, 0, 1}, a4[0], a4[1], a4[2], a4[3], 0, 7),
			[]byte{5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"address type 9", []byte{5, 1, 0, 5, 1, 0, 9, 1, 2}, []byte{5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, socksExchange(t, f.socks, tc.send))
		})
	}
}

func TestHTTPProxy(t *testing.T) {
	f := newFixture(t)
	pu, err := url.Parse("http://" + f.http)
	require.NoError(t, err)
	tr := &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: f.tlsConfig}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	get := func(t *testing.T, u string) (int, string) {
		t.Helper()
		resp, err := client.Get(u)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	t.Run("CONNECT to https", func(t *testing.T) {
		// net/http tunnels https:// through CONNECT.
		code, body := get(t, "https://"+f.a.Addr().String()+"/x")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "hello from server-a /x", body)
	})
	t.Run("absolute http", func(t *testing.T) {
		code, body := get(t, "http://server-a/y")
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "hello from server-a /y", body)
	})
	t.Run("http outside the mesh", func(t *testing.T) {
		code, body := get(t, "http://192.0.2.1/")
		require.Equal(t, http.StatusBadGateway, code)
		require.Contains(t, body, "no route to 192.0.2.1 in the mesh")
	})
	t.Run("CONNECT outside the mesh", func(t *testing.T) {
		_, err := client.Get("https://192.0.2.1/")
		require.ErrorContains(t, err, "Bad Gateway")
	})
	t.Run("raw CONNECT refused with reason", func(t *testing.T) {
		c, err := net.Dial("tcp", f.http)
		require.NoError(t, err)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", f.http, f.http)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		require.Equal(t, http.StatusBadGateway, resp.StatusCode)
		require.Contains(t, string(b), "no route to 127.0.0.1 in the mesh")
	})
	t.Run("raw CONNECT echo", func(t *testing.T) {
		c, err := net.Dial("tcp", f.http)
		require.NoError(t, err)
		target := net.JoinHostPort(f.a.Addr().String(), "7")
		fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		echo(t, &bufConn{Conn: c, r: br})
	})
	t.Run("not a proxy request", func(t *testing.T) {
		resp, err := http.Get("http://" + f.http + "/")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.True(t, strings.Contains(string(b), "this is an HTTP proxy"), string(b))
	})
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func TestNoDial(t *testing.T) {
	_, err := proxy.NewSOCKS5(proxy.Config{})
	require.ErrorIs(t, err, proxy.ErrNoDial)
	_, err = proxy.NewHTTP(proxy.Config{})
	require.ErrorIs(t, err, proxy.ErrNoDial)
}

// TestCloseStopsTunnels: Close ends open tunnels and returns once their
// goroutines are gone.
func TestCloseStopsTunnels(t *testing.T) {
	s := meshtest.NewServer(t)
	a := meshtest.Join(t, s)
	b := meshtest.Join(t, s)
	meshtest.WaitPeers(t, b, 1)
	serveEcho(t, a)
	socks, err := proxy.NewSOCKS5(proxy.Config{Dial: b.Dial})
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- socks.Serve(ln) }()
	d, err := xproxy.SOCKS5("tcp", ln.Addr().String(), nil, xproxy.Direct)
	require.NoError(t, err)
	c, err := d.Dial("tcp", net.JoinHostPort(a.Addr().String(), "7"))
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, socks.Close())
	require.ErrorIs(t, <-done, net.ErrClosed)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
}
