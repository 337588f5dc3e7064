package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	xproxy "golang.org/x/net/proxy"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/meshtest"
)

// TestJoinProxiesAndMetrics: a userspace agent with --socks5-server,
// --http-proxy and --metrics-listen lets ordinary clients reach a member's
// HTTP server, and serves its metrics.
func TestJoinProxiesAndMetrics(t *testing.T) {
	s := meshtest.NewServer(t)
	web := meshtest.Join(t, s, mesh.WithHostname("web"))
	l, err := web.Listen("tcp", ":80")
	require.NoError(t, err)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from web")
	})}
	go hs.Serve(l)
	defer hs.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut joinOutput
	done := make(chan error, 1)
	go func() {
		done <- runJoin(ctx, agentArgs(t, "--userspace", "--token", s.Token, "--hostname", "proxied",
			"--socks5-server", "127.0.0.1:0", "--http-proxy", "localhost:0", "--metrics-listen", "127.0.0.1:0", s.URL), &out, &errOut)
	}()
	addr := func(what string) string {
		re := regexp.MustCompile(what + ` on (?:http://)?(127\.0\.0\.1:\d+)`)
		var m []string
		meshtest.WaitFor(t, what, func() bool { m = re.FindStringSubmatch(out.String()); return m != nil })
		return m[1]
	}
	socksAddr, httpAddr, metricsAddr := addr("SOCKS5 proxy into the mesh"), addr("HTTP proxy into the mesh"), addr("metrics")

	// SOCKS5, with the member's name resolved in the mesh.
	d, err := xproxy.SOCKS5("tcp", socksAddr, nil, xproxy.Direct)
	require.NoError(t, err)
	viaSOCKS := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.(xproxy.ContextDialer).DialContext}}
	body, code := httpGet(t, viaSOCKS, "http://web/")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "hello from web", body)
	_, err = viaSOCKS.Get("http://192.0.2.7/")
	require.ErrorContains(t, err, "network unreachable")

	// HTTP proxy.
	pu, _ := url.Parse("http://" + httpAddr)
	viaHTTP := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	body, code = httpGet(t, viaHTTP, "http://"+web.Addr().String()+"/")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "hello from web", body)
	body, code = httpGet(t, viaHTTP, "http://192.0.2.7/")
	require.Equal(t, http.StatusBadGateway, code)
	require.Contains(t, body, "no route to 192.0.2.7 in the mesh")

	// Metrics.
	body, code = httpGet(t, http.DefaultClient, "http://"+metricsAddr+"/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Regexp(t, `(?m)^wiremesh_agent_peer_receive_bytes_total\{address="`+regexp.QuoteMeta(web.Addr().String())+`",peer="web",[^}]*\} [1-9]`, body)
	require.Contains(t, body, "wiremesh_agent_control_connected 1")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, errOut.String())
	case <-time.After(20 * time.Second):
		t.Fatal("join did not stop on cancel")
	}
	for _, a := range []string{socksAddr, httpAddr, metricsAddr} {
		_, err := net.DialTimeout("tcp", a, time.Second)
		require.Error(t, err, "%s closed when the agent stops", a)
	}
}

func httpGet(t *testing.T, c *http.Client, u string) (string, int) {
	t.Helper()
	resp, err := c.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b), resp.StatusCode
}

func TestProxyListenRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"socks on every interface", []string{"--socks5-server", ":1080"}, `--socks5-server ":1080" is not a loopback address`},
		{"http proxy on a public address", []string{"--http-proxy", "192.0.2.1:8080"}, "pass --proxy-allow-remote"},
		{"port only", []string{"--socks5-server", "1080"}, `did you mean 127.0.0.1:1080?`},
		{"metrics port only", []string{"--metrics-listen", "9100"}, `did you mean 127.0.0.1:9100?`},
		{"garbage", []string{"--http-proxy", "nope"}, "want HOST:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := agentArgs(t, append(append([]string{"--userspace", "--token", "x"}, tc.args...), "https://127.0.0.1:1")...)
			err := runJoin(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{})
			require.ErrorContains(t, err, tc.want)
			var ue *usageError
			require.True(t, errors.As(err, &ue), "a usage error (exit 2)")
		})
	}
	// With the explicit flag, a non-loopback address is accepted (the
	// join then fails for another reason: nothing listens at the URL).
	args := agentArgs(t, "--userspace", "--token", "x", "--proxy-allow-remote", "--socks5-server", "0.0.0.0:0", "https://127.0.0.1:1")
	err := runJoin(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{})
	require.Error(t, err)
	require.False(t, strings.Contains(err.Error(), "loopback"), err.Error())
}
