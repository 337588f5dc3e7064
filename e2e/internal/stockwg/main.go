// Command stockwg runs one stock wireguard-go device exactly as the
// wireguard-go daemon sets it up — tun.CreateTUN with the default MTU
// (1420), conn.NewDefaultBind, device.NewDevice, one peer configured
// through IpcSet, Up — without the UAPI socket or daemonizing. It is the
// reference leg of BenchmarkKernelThroughput (e2e/bench_test.go); the
// benchmark puts addresses on the device with `ip`.
//
//	stockwg -name stk0 -private-key KEY -listen-port 51820 \
//		-peer-public-key KEY -endpoint 10.0.0.2:51820 -allowed-ips 10.9.0.2/32
//
// Keys are base64, as wg(8) prints them. It prints "stockwg: up" once the
// device is up and runs until SIGTERM or SIGINT, then closes the device
// (which removes the TUN device).
package main

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

type config struct {
	name       string
	privateKey string // hex
	listenPort uint
	peerKey    string // hex
	endpoint   netip.AddrPort
	allowedIPs []netip.Prefix
	verbose    bool
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "stockwg:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "stockwg:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	fs := flag.NewFlagSet("stockwg", flag.ContinueOnError)
	var (
		c                         config
		priv, peer, endpoint, ips string
	)
	fs.StringVar(&c.name, "name", "stk0", "TUN device name")
	fs.StringVar(&priv, "private-key", "", "this device's private key (base64)")
	fs.UintVar(&c.listenPort, "listen-port", 51820, "UDP listen port")
	fs.StringVar(&peer, "peer-public-key", "", "the peer's public key (base64)")
	fs.StringVar(&endpoint, "endpoint", "", "the peer's UDP endpoint, ip:port")
	fs.StringVar(&ips, "allowed-ips", "", "the peer's allowed IPs, comma-separated prefixes")
	fs.BoolVar(&c.verbose, "v", false, "wireguard-go verbose logging")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if c.privateKey, err = keyHex(priv); err != nil {
		return config{}, fmt.Errorf("-private-key: %w", err)
	}
	if c.peerKey, err = keyHex(peer); err != nil {
		return config{}, fmt.Errorf("-peer-public-key: %w", err)
	}
	if c.listenPort > 65535 {
		return config{}, fmt.Errorf("-listen-port %d: want 0..65535", c.listenPort)
	}
	if c.endpoint, err = netip.ParseAddrPort(endpoint); err != nil {
		return config{}, fmt.Errorf("-endpoint %q: %w", endpoint, err)
	}
	for _, s := range strings.Split(ips, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return config{}, fmt.Errorf("-allowed-ips %q: %w", ips, err)
		}
		c.allowedIPs = append(c.allowedIPs, p)
	}
	return c, nil
}

// keyHex turns a base64 WireGuard key into the hex form IpcSet wants.
func keyHex(s string) (string, error) {
	if s == "" {
		return "", errors.New("missing")
	}
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(k) != 32 {
		return "", fmt.Errorf("%q is not a base64 32-byte key", s)
	}
	return hex.EncodeToString(k), nil
}

func run(c config) error {
	tdev, err := tun.CreateTUN(c.name, device.DefaultMTU)
	if err != nil {
		return fmt.Errorf("create TUN device %q: %w", c.name, err)
	}
	level := device.LogLevelError
	if c.verbose {
		level = device.LogLevelVerbose
	}
	logger := device.NewLogger(level, fmt.Sprintf("(%s) ", c.name))
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), logger)
	defer dev.Close() // closes tdev too

	var uapi strings.Builder
	fmt.Fprintf(&uapi, "private_key=%s\nlisten_port=%d\nreplace_peers=true\n", c.privateKey, c.listenPort)
	fmt.Fprintf(&uapi, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", c.peerKey, c.endpoint)
	for _, p := range c.allowedIPs {
		fmt.Fprintf(&uapi, "allowed_ip=%s\n", p)
	}
	if err := dev.IpcSet(uapi.String()); err != nil {
		return fmt.Errorf("configure device %q: %w", c.name, err)
	}
	if err := dev.Up(); err != nil {
		return fmt.Errorf("bring device %q up: %w", c.name, err)
	}
	fmt.Println("stockwg: up")

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case s := <-sig:
		fmt.Println("stockwg: stopping on", s)
	case <-dev.Wait():
		return errors.New("device closed unexpectedly")
	}
	return nil
}
