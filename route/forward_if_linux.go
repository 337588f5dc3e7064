//go:build linux

package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/vishvananda/netlink"
)

// Per-interface forwarding.
//
// Linux decides whether to forward a packet by the interface it arrived
// on, and the two families differ (measured on Linux 6.18 with two veths
// through a router namespace, global switches off):
//
//   - IPv4: net.ipv4.conf.IF.forwarding lets packets that arrive on IF be
//     forwarded (ip_route_input checks the input device's flag only). A
//     router needs it on every interface traffic arrives on: the mesh
//     interface (towards the child prefixes) and the interfaces facing
//     the child prefixes (replies, connections towards the mesh). The
//     global net.ipv4.ip_forward (= conf.all.forwarding) is only a
//     broadcast: writing it sets every interface's flag, 1 or 0.
//   - IPv6: net.ipv6.conf.IF.forwarding does not forward anything while
//     conf.all.forwarding is 0 (ip6_forward checks the global flag);
//     net.ipv6.conf.IF.force_forwarding (Linux 6.17+) does, per input
//     interface. Without it the only switch is the global one.
//
// So a router turns on the per-interface flags it needs and never a
// global IPv4 switch; it turns the global IPv6 switch on only on kernels
// without force_forwarding, and never turns it off (see
// EnableInterfaceForwarding): Docker or another router that started
// since may rely on it.

// ifaceForward matches the per-interface forwarding sysctls this package
// writes.
var ifaceForward = regexp.MustCompile(`^/proc/sys/net/ipv[46]/conf/[^/]+/(forwarding|force_forwarding)$`)

// IsForwardingSysctl reports whether path is a forwarding sysctl that
// EnableInterfaceForwarding or EnableForwarding may write.
func IsForwardingSysctl(path string) bool {
	return path == sysctlIPv4Forward || path == sysctlIPv6Forward || ifaceForward.MatchString(path) && filepath.Base(filepath.Dir(path)) != "all"
}

// ForwardingSysctls returns the sysctls that let packets arriving on each
// of ifnames be forwarded, IPv4 and/or IPv6 (see above): per interface,
// except IPv6 on a kernel without force_forwarding, which gets the global
// conf.all.forwarding. The names are checked, not the interfaces.
func ForwardingSysctls(ifnames []string, v4, v6 bool, opts ...Option) ([]string, error) {
	const op = "route.ForwardingSysctls"
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer ns.Close()
	var out []string
	err = inNetNS(ns, func() error {
		for _, ifn := range ifnames {
			if ifn == "" || ifn == "." || ifn == ".." || filepath.Base(ifn) != ifn {
				return fmt.Errorf("%w: interface name %q", ErrInvalid, ifn)
			}
			if v4 {
				out = append(out, "/proc/sys/net/ipv4/conf/"+ifn+"/forwarding")
			}
			if v6 {
				p := "/proc/sys/net/ipv6/conf/" + ifn + "/force_forwarding"
				if _, err := os.Stat(p); err != nil {
					p = sysctlIPv6Forward
				}
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// EnableInterfaceForwarding writes "1" to each of paths (from
// ForwardingSysctls) that is not "1" yet. restore puts back what it
// changed, leaving alone:
//
//   - a value someone changed since (it is no longer "1");
//   - a per-interface IPv4 flag when net.ipv4.conf.all.forwarding is "1"
//     now: someone turned forwarding on everywhere since, and relies on it;
//   - an interface that is gone (a TUN device closed before);
//   - the global IPv6 switch: it is left on (logged), since anything that
//     started meanwhile (Docker, another router) may rely on it.
//
// On error nothing is changed. restore is safe to call more than once.
func EnableInterfaceForwarding(paths []string, opts ...Option) (restore func() error, err error) {
	const op = "route.EnableInterfaceForwarding"
	for _, p := range paths {
		if p != sysctlIPv6Forward && !(ifaceForward.MatchString(p) && IsForwardingSysctl(p)) {
			return nil, fmt.Errorf("%s: %w: %q is not a forwarding sysctl", op, ErrInvalid, p)
		}
	}
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	restore, err = turnOn(ns, paths, o, func(p, old string) error { return restoreSysctl(p, old, o) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return restore, nil
}

// RestoreForwardingSysctl puts old back into the forwarding sysctl path
// by the rules of EnableInterfaceForwarding's restore, in the caller's
// network namespace: for a record left by a run that crashed.
func RestoreForwardingSysctl(path, old string, opts ...Option) error {
	if !IsForwardingSysctl(path) {
		return fmt.Errorf("route.RestoreForwardingSysctl: %w: %q is not a forwarding sysctl", ErrInvalid, path)
	}
	return restoreSysctl(path, old, newOptions(opts))
}

func restoreSysctl(p, old string, o *options) error {
	if p == sysctlIPv6Forward {
		o.log.Info("leaving IPv6 forwarding on: this kernel has no per-interface force_forwarding, and other programs may rely on the global switch by now", "sysctl", p)
		return nil
	}
	cur, err := readSysctl(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the interface is gone
	}
	if err != nil {
		return err
	}
	if cur != "1" {
		return nil
	}
	if p == sysctlIPv4Forward {
		return writeSysctl(p, old) // the global switch itself (EnableForwarding's record)
	}
	if filepath.Base(filepath.Dir(filepath.Dir(filepath.Dir(p)))) == "ipv4" {
		if all, err := readSysctl("/proc/sys/net/ipv4/conf/all/forwarding"); err == nil && all == "1" {
			o.log.Info("leaving forwarding on: IPv4 forwarding was turned on for every interface meanwhile", "sysctl", p)
			return nil
		}
	}
	return writeSysctl(p, old)
}

// PrefixInterfaces returns the names of the interfaces through which the
// host reaches prefixes: those of the main table's routes that overlap a
// prefix (inside it, or containing it), leaving out default routes,
// loopback and exclude. They are the interfaces that traffic from a
// router's child prefixes arrives on. A prefix reached only through a
// default route (or served on the host itself) adds none: forwarding for
// packets arriving from the uplink is what a router must not turn on.
func PrefixInterfaces(prefixes []netip.Prefix, exclude string, opts ...Option) ([]string, error) {
	const op = "route.PrefixInterfaces"
	o := newOptions(opts)
	h, err := o.handle()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer h.Close()
	idx := map[int]bool{}
	for _, p := range prefixes {
		p = p.Masked()
		fam := netlink.FAMILY_V4
		if p.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		rs, err := h.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("%s: list routes: %w", op, err)
		}
		for _, r := range rs {
			if r.Dst == nil {
				continue
			}
			d, ok := netip.AddrFromSlice(r.Dst.IP)
			bits, _ := r.Dst.Mask.Size()
			if ok && bits > 0 && netip.PrefixFrom(d.Unmap(), bits).Overlaps(p) {
				idx[r.LinkIndex] = true
			}
		}
	}
	var out []string
	for i := range idx {
		l, err := h.LinkByIndex(i)
		if err != nil {
			continue
		}
		a := l.Attrs()
		if a.Name == exclude || a.Flags&net.FlagLoopback != 0 {
			continue
		}
		out = append(out, a.Name)
	}
	slices.Sort(out)
	return out, nil
}
