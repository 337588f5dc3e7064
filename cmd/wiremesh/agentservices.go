package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/mesh"
	"github.com/wiremesh/wiremesh/mesh/meshmetrics"
	"github.com/wiremesh/wiremesh/mesh/proxy"
)

// serviceFlags are the agent's local services: the SOCKS5 and HTTP
// proxies into the mesh and the metrics endpoint.
type serviceFlags struct {
	socks5, httpProxy, metrics string
	allowRemoteProxy           bool
}

func (s *serviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.socks5, "socks5-server", "", "serve a SOCKS5 proxy into the mesh at HOST:PORT, e.g. 127.0.0.1:1080 (no authentication: loopback unless --proxy-allow-remote)")
	fs.StringVar(&s.httpProxy, "http-proxy", "", "serve an HTTP proxy (CONNECT, and http:// URLs) into the mesh at HOST:PORT, e.g. 127.0.0.1:8080 (loopback unless --proxy-allow-remote)")
	fs.BoolVar(&s.allowRemoteProxy, "proxy-allow-remote", false, "let --socks5-server and --http-proxy listen on a non-loopback address: whoever reaches the port reaches the mesh")
	fs.StringVar(&s.metrics, "metrics-listen", "", "serve Prometheus metrics at http://HOST:PORT/metrics")
}

// agentServices are the listeners of the local services, bound before
// the node joins (so a port in use fails before registering), served once
// it has.
type agentServices struct {
	socksLn, httpLn, metricsLn net.Listener

	stops []func() error
	wg    sync.WaitGroup
}

// listen checks the addresses and binds the listeners.
func (s *serviceFlags) listen(name string) (_ *agentServices, err error) {
	as := &agentServices{}
	defer func() {
		if err != nil {
			as.close()
		}
	}()
	for _, l := range []struct {
		flag, addr string
		proxy      bool
		ln         *net.Listener
	}{
		{"--socks5-server", s.socks5, true, &as.socksLn},
		{"--http-proxy", s.httpProxy, true, &as.httpLn},
		{"--metrics-listen", s.metrics, false, &as.metricsLn},
	} {
		if l.addr == "" {
			continue
		}
		if err := checkServiceListen(name, l.flag, l.addr, l.proxy && !s.allowRemoteProxy); err != nil {
			return nil, err
		}
		if *l.ln, err = net.Listen("tcp", l.addr); err != nil {
			return nil, fmt.Errorf("%s: %s %s: %w", name, l.flag, l.addr, err)
		}
		as.stops = append(as.stops, (*l.ln).Close)
	}
	return as, nil
}

// checkServiceListen checks a listen address; with loopbackOnly, its host
// must be a loopback address or "localhost".
func checkServiceListen(name, flag, addr string, loopbackOnly bool) error {
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		return usageErr("%s: %s %q: did you mean 127.0.0.1:%s?", name, flag, addr, addr)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErr("%s: %s %q: want HOST:PORT such as 127.0.0.1:1080", name, flag, addr)
	}
	if !loopbackOnly || host == "localhost" {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
		return nil
	}
	return usageErr("%s: %s %q is not a loopback address: the proxy has no authentication, so whoever reaches it reaches the mesh; "+
		"use 127.0.0.1:PORT, or pass --proxy-allow-remote if that is what you want", name, flag, addr)
}

// serve starts the services for n and reports them on stdout. Errors of a
// running service go to log.
func (as *agentServices) serve(n *mesh.Node, stdout io.Writer, log *slog.Logger) error {
	cfg := proxy.Config{Dial: n.Dial, Logger: log}
	if as.socksLn != nil {
		p, err := proxy.NewSOCKS5(cfg)
		if err != nil {
			return err
		}
		as.start("SOCKS5 proxy", as.socksLn, p.Serve, p.Close, log)
		fmt.Fprintf(stdout, "SOCKS5 proxy into the mesh on %s\n", as.socksLn.Addr())
	}
	if as.httpLn != nil {
		p, err := proxy.NewHTTP(cfg)
		if err != nil {
			return err
		}
		as.start("HTTP proxy", as.httpLn, p.Serve, p.Close, log)
		fmt.Fprintf(stdout, "HTTP proxy into the mesh on %s\n", as.httpLn.Addr())
	}
	if as.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", meshmetrics.Handler(n))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		as.start("metrics", as.metricsLn, srv.Serve, srv.Close, log)
		fmt.Fprintf(stdout, "metrics on http://%s/metrics\n", as.metricsLn.Addr())
	}
	return nil
}

// start runs serve(ln) until stop.
func (as *agentServices) start(what string, ln net.Listener, serve func(net.Listener) error, stop func() error, log *slog.Logger) {
	as.stops = append(as.stops, stop)
	as.wg.Add(1)
	go func() {
		defer as.wg.Done()
		if err := serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("wiremesh: "+what+" stopped", "err", err)
		}
	}()
}

// close stops the services and waits for them. Idempotent.
func (as *agentServices) close() {
	for _, stop := range as.stops {
		stop()
	}
	as.stops = nil
	as.wg.Wait()
}
