package netlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netns"
)

// Host is a network namespace of a [Lab]. Its build methods (AddAddr,
// AddRoute, ...) fail the lab's test on error and must be called from the
// test's goroutine; its probes (Run, Ping, DialTCP) return errors and may
// be called from any goroutine.
type Host struct {
	lab  *Lab
	name string
	ns   string // namespace name, "wm<id>-<name>"

	mu   sync.Mutex      // guards devs
	devs map[string]bool // interface names taken in this namespace
}

// Name returns the name given to [Lab.Host], e.g. "node1".
func (h *Host) Name() string { return h.name }

// NS returns the namespace name, e.g. "wm1a2b3c-node1", as used by
// `ip netns exec`.
func (h *Host) NS() string { return h.ns }

// Path returns the namespace's bind mount, /run/netns/<NS>.
func (h *Host) Path() string { return filepath.Join(netnsDir, h.ns) }

// Switch is a bridge ("br0") living in a namespace of its own, the lab's
// stand-in for a LAN or the WAN.
type Switch struct {
	host   *Host
	bridge string
}

// Name returns the name given to [Lab.Switch].
func (s *Switch) Name() string { return s.host.name }

// Host returns the switch's namespace, for inspection (Links, Run).
func (s *Switch) Host() *Host { return s.host }

// LinkEnd is one side of a veth pair.
type LinkEnd struct {
	Host *Host        // the namespace holding this end (a Switch's namespace for a switch port)
	Dev  string       // interface name inside Host
	Addr netip.Prefix // address configured on Dev; invalid if none
}

// Link is a veth pair made by [Lab.Connect], [Lab.Wire] or
// [Lab.AttachToBridge]. A is the side of the first host argument.
type Link struct {
	A, B LinkEnd
}

// Down sets A's end down, which cuts the link for both sides (e.g. to take
// a member off the WAN). It fails the lab's test on error.
func (k *Link) Down() {
	k.A.Host.lab.t.Helper()
	k.A.Host.must(k.A.Host.ip("link", "set", "dev", k.A.Dev, "down"))
}

// Up sets A's end up again.
func (k *Link) Up() {
	k.A.Host.lab.t.Helper()
	k.A.Host.must(k.A.Host.ip("link", "set", "dev", k.A.Dev, "up"))
}

// Switch makes a namespace "wm<id>-<name>" holding a bridge "br0" (up).
// Hosts join it with [Lab.Connect].
func (l *Lab) Switch(name string) *Switch {
	l.t.Helper()
	h, err := l.newNode(name)
	if err != nil {
		l.t.Fatalf("netlab: Switch %q: %v", name, err)
	}
	h.Bridge("br0", netip.Prefix{})
	return &Switch{host: h, bridge: "br0"}
}

// Connect plugs h into sw with a veth pair: in h the interface is named
// after the switch (e.g. "wan") and carries addr (if valid); in the switch's
// namespace it is named after h and enslaved to the bridge. Both ends are up.
func (l *Lab) Connect(h *Host, sw *Switch, addr netip.Prefix) *Link {
	l.t.Helper()
	k, err := l.veth(h, sw.host, sw.host.name, h.name, addr, netip.Prefix{})
	if err == nil {
		err = sw.host.ip("link", "set", "dev", k.B.Dev, "master", sw.bridge)
	}
	if err != nil {
		l.t.Fatalf("netlab: Connect %s to switch %s: %v", h.name, sw.host.name, err)
	}
	return k
}

// Wire links a and b point to point: in a the interface is named after b,
// in b after a; aAddr and bAddr (if valid) go on the respective ends.
func (l *Lab) Wire(a *Host, aAddr netip.Prefix, b *Host, bAddr netip.Prefix) *Link {
	l.t.Helper()
	if a == b {
		l.t.Fatalf("netlab: Wire %s to itself", a.name)
	}
	k, err := l.veth(a, b, b.name, a.name, aAddr, bAddr)
	if err != nil {
		l.t.Fatalf("netlab: Wire %s to %s: %v", a.name, b.name, err)
	}
	return k
}

// AttachToBridge plugs h into the bridge named bridge inside bridgeHost (see
// [Host.Bridge]), like a container on a Docker network: in h the interface
// is named after bridgeHost and carries addr; in bridgeHost it is named
// after h and enslaved to bridge.
func (l *Lab) AttachToBridge(h *Host, bridgeHost *Host, bridge string, addr netip.Prefix) *Link {
	l.t.Helper()
	if h == bridgeHost {
		l.t.Fatalf("netlab: AttachToBridge %s to its own bridge", h.name)
	}
	k, err := l.veth(h, bridgeHost, bridgeHost.name, h.name, addr, netip.Prefix{})
	if err == nil {
		err = bridgeHost.ip("link", "set", "dev", k.B.Dev, "master", bridge)
	}
	if err != nil {
		l.t.Fatalf("netlab: AttachToBridge %s to %s/%s: %v", h.name, bridgeHost.name, bridge, err)
	}
	return k
}

// veth creates a veth pair directly inside a's and b's namespaces (never in
// the caller's), names the ends after aName/bName (made unique), sets the
// addresses and brings both ends up.
func (l *Lab) veth(a, b *Host, aName, bName string, aAddr, bAddr netip.Prefix) (*Link, error) {
	if a.lab != l || b.lab != l {
		return nil, errors.New("hosts belong to another lab")
	}
	k := &Link{
		A: LinkEnd{Host: a, Dev: a.claimDev(aName), Addr: aAddr},
		B: LinkEnd{Host: b, Dev: b.claimDev(bName), Addr: bAddr},
	}
	if err := a.ip("link", "add", "name", k.A.Dev, "type", "veth", "peer", "name", k.B.Dev, "netns", b.ns); err != nil {
		return nil, err
	}
	for _, e := range []LinkEnd{k.A, k.B} {
		if e.Addr.IsValid() {
			if err := e.Host.ip("addr", "add", e.Addr.String(), "dev", e.Dev); err != nil {
				return nil, err
			}
		}
		if err := e.Host.ip("link", "set", "dev", e.Dev, "up"); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// claimDev reserves an interface name based on base: base itself, or
// base2, base3, ... when taken.
func (h *Host) claimDev(base string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	name := base
	for i := 2; h.devs[name]; i++ {
		name = base + strconv.Itoa(i)
	}
	h.devs[name] = true
	return name
}

// Bridge makes a bridge named name inside h (e.g. node1's "docker0"), up,
// with addr on it if addr is valid (e.g. 172.24.0.1/24).
func (h *Host) Bridge(name string, addr netip.Prefix) {
	h.lab.t.Helper()
	if len(name) > 15 || name == "" || strings.ContainsAny(name, "/ \t\n") {
		h.lab.t.Fatalf("netlab: Bridge %q in %s: invalid interface name", name, h.name)
	}
	if got := h.claimDev(name); got != name {
		h.lab.t.Fatalf("netlab: Bridge %q in %s: name already used", name, h.name)
	}
	h.must(h.ip("link", "add", "name", name, "type", "bridge"))
	if addr.IsValid() {
		h.must(h.ip("addr", "add", addr.String(), "dev", name))
	}
	h.must(h.ip("link", "set", "dev", name, "up"))
}

// AddAddr adds p (address and prefix length, e.g. 172.24.0.10/32) to dev.
func (h *Host) AddAddr(dev string, p netip.Prefix) {
	h.lab.t.Helper()
	if !p.IsValid() {
		h.lab.t.Fatalf("netlab: AddAddr on %s/%s: invalid prefix %q", h.name, dev, p)
	}
	h.must(h.ip("addr", "add", p.String(), "dev", dev))
}

// AddRoute routes dst (masked) via the gateway via.
func (h *Host) AddRoute(dst netip.Prefix, via netip.Addr) {
	h.lab.t.Helper()
	if !dst.IsValid() || !via.IsValid() {
		h.lab.t.Fatalf("netlab: AddRoute in %s: invalid destination %q or gateway %q", h.name, dst, via)
	}
	h.must(h.ip("route", "add", dst.Masked().String(), "via", via.String()))
}

// DefaultRoute sets the default route via the gateway via.
func (h *Host) DefaultRoute(via netip.Addr) {
	h.lab.t.Helper()
	if !via.IsValid() {
		h.lab.t.Fatalf("netlab: DefaultRoute in %s: invalid gateway %q", h.name, via)
	}
	fam := "-4"
	if via.Is6() {
		fam = "-6"
	}
	h.must(h.ip(fam, "route", "replace", "default", "via", via.String()))
}

// EnableForwarding turns on IPv4 (and, where available, IPv6) forwarding,
// making h a router.
func (h *Host) EnableForwarding() {
	h.lab.t.Helper()
	h.must(h.sysctl("net/ipv4/ip_forward", "1"))
	if err := h.sysctl("net/ipv6/conf/all/forwarding", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		h.must(err)
	}
}

// Run runs name with args inside the namespace (`ip netns exec NS name
// args...`) and returns its combined output.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netlab: run %s %s in %s: %w", name, strings.Join(args, " "), h.name, err)
	}
	return out, nil
}

// MustRun is Run with a 30 s timeout that fails t (with the output) on
// error and returns the output as a string.
func (h *Host) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := h.Run(ctx, name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return string(out)
}

// Links returns the sorted names of h's interfaces.
func (h *Host) Links() []string {
	h.lab.t.Helper()
	out, err := runCmd(context.Background(), "ip", "-n", h.ns, "-j", "link", "show")
	if err != nil {
		h.lab.t.Fatalf("netlab: Links of %s: %v: %s", h.name, err, out)
	}
	var links []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		h.lab.t.Fatalf("netlab: Links of %s: parse `ip -j link show`: %v", h.name, err)
	}
	names := make([]string, 0, len(links))
	for _, k := range links {
		names = append(names, k.Name)
	}
	slices.Sort(names)
	return names
}

// Routes returns every IPv4 and IPv6 route of every table
// (`ip route show table all`), for before/after comparisons.
func (h *Host) Routes() string {
	h.lab.t.Helper()
	return h.show("-4", "route", "show", "table", "all") + h.show("-6", "route", "show", "table", "all")
}

// Rules returns the IPv4 and IPv6 policy routing rules (`ip rule show`).
func (h *Host) Rules() string {
	h.lab.t.Helper()
	return h.show("-4", "rule", "show") + h.show("-6", "rule", "show")
}

// NFTRuleset returns `nft list ruleset` of h ("" when nothing is loaded).
func (h *Host) NFTRuleset() string {
	h.lab.t.Helper()
	return h.MustRun(h.lab.t, "nft", "list", "ruleset")
}

func (h *Host) show(args ...string) string {
	h.lab.t.Helper()
	out, err := runCmd(context.Background(), "ip", append([]string{"-n", h.ns}, args...)...)
	if err != nil {
		h.lab.t.Fatalf("netlab: ip %s in %s: %v: %s", strings.Join(args, " "), h.name, err, out)
	}
	return string(out)
}

// ip runs `ip -n NS args...`.
func (h *Host) ip(args ...string) error {
	out, err := runCmd(context.Background(), "ip", append([]string{"-n", h.ns}, args...)...)
	if err != nil {
		return fmt.Errorf("ip %s in %s: %v: %s", strings.Join(args, " "), h.name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (h *Host) must(err error) {
	h.lab.t.Helper()
	if err != nil {
		h.lab.t.Fatalf("netlab: %v", err)
	}
}

// sysctl writes /proc/sys/<key> inside the namespace.
func (h *Host) sysctl(key, val string) error {
	err := h.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644)
	})
	if err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, val, h.name, err)
	}
	return nil
}

// Do runs fn on an OS thread that has entered h's namespace; sockets fn
// creates belong to the namespace for their whole life. The thread returns
// to its original namespace afterwards; if that fails it stays locked and
// the runtime discards it, so the switch never leaks to other goroutines.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Restore rather than rely on the thread dying: a goroutine on the
		// main thread that exits locked is wedged, not discarded, and would
		// keep the whole process listed in the namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current namespace: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(h.Path())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open namespace %s: %w", h.ns, err)
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", h.ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} // else: leave the thread locked; it ends with this goroutine
		errc <- ferr
	}()
	return <-errc
}
