// Command workload is the container of the docker-child-prefix example: a
// static program (no libc, so it runs in a FROM scratch image) that serves
// TCP and reaches other workloads by TCP and ICMP echo.
//
//	workload serve [--listen :7000] [--name NAME]
//	workload dial [--timeout 10s] [--expect NAME] HOST:PORT
//	workload ping [--timeout 10s] HOST
//
// serve greets every connection with one line
//
//	workload name=NAME local=ADDR:PORT remote=ADDR:PORT
//
// (who answered, on which address, and from which address it saw the
// caller: a mesh peer's own address, not a NAT or a published port), then
// echoes whatever it receives. dial connects (retrying until --timeout),
// prints that line, checks that a line sent comes back, and with --expect
// that the server is named NAME. ping sends an ICMP echo request a second
// until a reply comes and prints "reply from HOST in DURATION"; it needs
// a raw ICMP socket (root or CAP_NET_RAW, which Docker grants). dial and
// ping exit 0 on success and 1 otherwise.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

const usage = `usage:
  workload serve [--listen :7000] [--name NAME]
  workload dial [--timeout 10s] [--expect NAME] HOST:PORT
  workload ping [--timeout 10s] HOST`

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New(usage)}
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	switch args[0] {
	case "serve":
		listen := fs.String("listen", ":7000", "TCP listen address")
		host, _ := os.Hostname()
		name := fs.String("name", host, "name in the greeting (default: the host name)")
		if err := parse(fs, args[1:], 0); err != nil {
			return err
		}
		return serve(ctx, *listen, *name, out)
	case "dial":
		timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
		expect := fs.String("expect", "", "fail unless the server's name is this")
		if err := parse(fs, args[1:], 1); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		line, err := dial(ctx, fs.Arg(0), *expect)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, line)
		return nil
	case "ping":
		timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
		if err := parse(fs, args[1:], 1); err != nil {
			return err
		}
		dst, err := netip.ParseAddr(fs.Arg(0))
		if err != nil {
			return usageError{fmt.Errorf("ping: host %q: want an IP address", fs.Arg(0))}
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		rtt, err := ping(ctx, dst.Unmap())
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "reply from %s in %s\n", dst.Unmap(), rtt.Round(10*time.Microsecond))
		return nil
	}
	return usageError{fmt.Errorf("unknown command %q\n%s", args[0], usage)}
}

// parse parses flags (which may come before or after the arguments) and
// requires exactly nargs arguments.
func parse(fs *flag.FlagSet, args []string, nargs int) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return usageError{fmt.Errorf("%s: %w\n%s", fs.Name(), err, usage)}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != nargs {
		return usageError{fmt.Errorf("%s: want %d argument(s), got %q\n%s", fs.Name(), nargs, pos, usage)}
	}
	return fs.Parse(pos) // leaves them in fs.Args()
}

// serve accepts connections until ctx ends.
func serve(ctx context.Context, addr, name string, out io.Writer) error {
	if name == "" || strings.ContainsAny(name, " \t\n=") {
		return usageError{fmt.Errorf("serve: name %q: want a word without spaces or '='", name)}
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	fmt.Fprintf(out, "workload %s serving tcp on %s\n", name, ln.Addr())
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
				fmt.Fprintf(out, "workload %s stopping\n", name)
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("serve: %w", err)
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			greet := fmt.Sprintf("workload name=%s local=%s remote=%s\n", name, unmap(c.LocalAddr()), unmap(c.RemoteAddr()))
			if _, err := io.WriteString(c, greet); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		})
	}
}

// unmap prints a TCP address with an IPv4-mapped IPv6 address as IPv4.
func unmap(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	return a.String()
}

// dial connects to addr until a greeting and an echo come back or ctx
// ends, and returns the greeting line.
func dial(ctx context.Context, addr, expect string) (string, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", usageError{fmt.Errorf("dial: address %q: want HOST:PORT", addr)}
	}
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		line, err := dialOnce(actx, addr)
		cancel()
		if err == nil {
			if expect != "" && !strings.Contains(" "+line+" ", " name="+expect+" ") {
				return "", fmt.Errorf("dial %s: answered by %q, want name=%s", addr, line, expect)
			}
			return line, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("dial %s: %w", addr, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func dialOnce(ctx context.Context, addr string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting: %w", err)
	}
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "workload ") {
		return "", fmt.Errorf("not a workload: greeting %q", line)
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	want := hex.EncodeToString(nonce[:]) + "\n"
	if _, err := io.WriteString(c, want); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read echo: %w", err)
	}
	if got != want {
		return "", fmt.Errorf("echo mismatch: sent %q, got %q", want, got)
	}
	return line, nil
}

// ping sends ICMP echo requests to dst on a raw socket, one a second,
// until the reply to one comes or ctx ends, and returns its round trip.
func ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	network, typ, replyType := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() {
		network, typ, replyType = "ip6:ipv6-icmp", 128, 129 // the kernel sums ICMPv6
	}
	conn, err := net.ListenPacket(network, "")
	if err != nil {
		return 0, fmt.Errorf("ping %s: open raw ICMP socket (needs root or CAP_NET_RAW): %w", dst, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := binary.BigEndian.Uint16(idb[:])
	buf := make([]byte, 1500)
	for seq := uint16(1); ; seq++ {
		msg := make([]byte, 8+16)
		msg[0] = typ
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], seq)
		copy(msg[8:], "wiremesh-example")
		if dst.Is4() {
			binary.BigEndian.PutUint16(msg[2:], checksum(msg))
		}
		start := time.Now()
		end := start.Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(end) {
			end = d
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("ping %s: no reply: %w", dst, ctx.Err())
		}
		_ = conn.SetDeadline(end)
		if _, err := conn.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			// No route yet, for example: wait out the second and retry.
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("ping %s: %w", dst, err)
			case <-time.After(time.Until(end)):
			}
			continue
		}
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // deadline: next request
			}
			// A raw socket sees all ICMP of the host: keep only our reply.
			src, ok := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			if ok && src.Unmap() == dst && n >= 8 && buf[0] == replyType &&
				binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
				return time.Since(start), nil
			}
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
