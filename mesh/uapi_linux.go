//go:build linux

package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/mesh/internal/wireguard/device"
)

// uapiDir is where the WireGuard tools (`wg`) look for the control socket
// of a userspace implementation: /var/run/wireguard/IFACE.sock.
const uapiDir = "/var/run/wireguard"

// uapiServer answers the standard WireGuard UAPI on a unix socket (see
// serveUAPI), so that `wg show IFACE` lists a kernel-mode node's peers,
// endpoints, handshakes and bytes. It is wireguard-go's
// ipc.UAPIOpen/UAPIListen done without their process-wide umask change
// and unowned goroutines: the socket is made owner-only in a private
// directory and renamed into place, every connection is tracked, and
// close waits for them. What `wg set` changes
// the node restores (see repairDrift), and after each connection onDone
// is called so that it does so at once.
type uapiServer struct {
	ln     *net.UnixListener
	path   string
	fi     os.FileInfo // the socket file, to remove only ours on close
	dev    *device.Device
	onDone func()
	log    *slog.Logger
	wg     sync.WaitGroup

	mu     sync.Mutex // guards the fields below
	closed bool
	conns  map[net.Conn]struct{}
}

// openUAPI listens on dir/ifname.sock (mode 0600; dir is created 0755 as
// the WireGuard tools do) and serves dev's UAPI there until close. A
// socket file nobody answers on (left by a crashed run) is replaced; one
// that answers is an error.
func openUAPI(dir, ifname string, dev *device.Device, onDone func(), log *slog.Logger) (*uapiServer, error) {
	path := filepath.Join(dir, ifname+".sock")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("uapi socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("uapi socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("uapi socket %s: another process answers on it", path)
		}
		os.Remove(path)
	}
	ln, fi, err := listenPrivate(dir, path)
	if err != nil {
		return nil, fmt.Errorf("uapi socket %s: %w", path, err)
	}
	s := &uapiServer{ln: ln, path: path, fi: fi, dev: dev, onDone: onDone, log: log, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// listenPrivate listens on a unix socket that is mode 0600 from the moment
// it appears at path: made in a 0700 directory under dir, chmodded, then
// renamed into place.
func listenPrivate(dir, path string) (*net.UnixListener, os.FileInfo, error) {
	tmp, err := os.MkdirTemp(dir, ".wiremesh-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(tmp)
	tpath := filepath.Join(tmp, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tpath, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	ln.SetUnlinkOnClose(false) // it is renamed: close removes path itself
	fail := func(err error) (*net.UnixListener, os.FileInfo, error) {
		ln.Close()
		return nil, nil, err
	}
	if err := os.Chmod(tpath, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tpath, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return ln, fi, nil
}

func (s *uapiServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Warn("mesh: uapi socket stopped", "err", err)
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			serveUAPI(s.dev, c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			if s.onDone != nil {
				s.onDone()
			}
		}()
	}
}

// close stops serving, closes the connections, waits for them and removes
// the socket file (if it is still ours). Idempotent.
func (s *uapiServer) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.fi) {
		os.Remove(s.path)
	}
}

// openUAPI opens the device's UAPI socket (/var/run/wireguard/IFACE.sock);
// without it the node works, but `wg show` does not list it.
func (k *kernelPlane) openUAPI() {
	u, err := openUAPI(uapiDir, k.ifname, k.dev.dev, k.kickRepair, k.log)
	if err != nil {
		k.log.Warn("mesh: no WireGuard UAPI socket: `wg show` will not list this interface", "err", err)
		return
	}
	k.uapi = u
}

// kickRepair has the loop check the device for outside changes soon.
func (k *kernelPlane) kickRepair() {
	select {
	case k.repair <- struct{}{}:
	default:
	}
}

// repairDrift restores the device's configuration if it was changed from
// outside (`wg set`), and says so.
func (k *kernelPlane) repairDrift() {
	fixed, err := k.dev.repairDrift()
	switch {
	case err != nil && !errors.Is(err, net.ErrClosed):
		k.log.Warn("mesh: checking the WireGuard device for outside changes", "err", err)
	case fixed:
		k.log.Warn("mesh: the WireGuard device was changed from outside (wg set?): restored the mesh's configuration")
	}
}
