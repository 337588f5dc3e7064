//go:build linux

package route

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Forwarding sysctls (per network namespace).
const (
	sysctlIPv4Forward = "/proc/sys/net/ipv4/ip_forward"
	sysctlIPv6Forward = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// EnableForwarding turns on IPv4 and/or IPv6 forwarding in the caller's
// network namespace (or the one given with WithNetNS) by writing "1" to
// net.ipv4.ip_forward and net.ipv6.conf.all.forwarding through /proc/sys.
// restore puts back the values it changed (a value already "1" is left
// alone) and is safe to call more than once. On error nothing is changed.
//
// Note that IPv6 forwarding makes the kernel ignore router advertisements on
// interfaces with accept_ra=1, which can cost a SLAAC-configured host its
// IPv6 default route; callers enable it only where IPv6 is routed.
//
// With WithNetNS the namespace is entered on a dedicated OS thread (files
// under /proc/sys/net show the namespace of the thread that opens them).
func EnableForwarding(v4, v6 bool, opts ...Option) (restore func() error, err error) {
	const op = "route.EnableForwarding"
	o := newOptions(opts)
	ns, err := o.ownNS()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	var paths []string
	if v4 {
		paths = append(paths, sysctlIPv4Forward)
	}
	if v6 {
		paths = append(paths, sysctlIPv6Forward)
	}
	restore, err = turnOn(ns, paths, o, writeSysctl)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return restore, nil
}

// turnOn writes "1" to each of paths (sysctls) in ns that is not "1" yet,
// and logs each it changed. restore calls undo(path, old value) for each,
// in ns, and is safe to call more than once. turnOn owns ns: restore
// closes it, and so does a failure, after undoing what it changed.
func turnOn(ns netns.NsHandle, paths []string, o *options, undo func(path, old string) error) (restore func() error, err error) {
	changed := map[string]string{} // path → old value
	var order []string             // changed's keys in the order written
	undoAll := func() error {
		return inNetNS(ns, func() error {
			var errs []error
			for p, old := range changed {
				errs = append(errs, undo(p, old))
			}
			return errors.Join(errs...)
		})
	}
	err = inNetNS(ns, func() error {
		for _, p := range paths {
			old, err := readSysctl(p)
			if err != nil {
				return err
			}
			if old == "1" {
				continue
			}
			if err := writeSysctl(p, "1"); err != nil {
				return err
			}
			changed[p] = old
			order = append(order, p)
		}
		return nil
	})
	if err != nil {
		err = errors.Join(err, undoAll())
		ns.Close()
		return nil, err
	}
	for _, p := range order {
		o.log.Info("IP forwarding enabled", "sysctl", p)
	}
	var once sync.Once
	var rerr error
	return func() error {
		once.Do(func() {
			defer ns.Close()
			if rerr = undoAll(); rerr != nil {
				rerr = fmt.Errorf("route: restore forwarding: %w", rerr)
			}
		})
		return rerr
	}, nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, v string) error {
	if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %q to %s: %w", v, path, err)
	}
	return nil
}

// CleanupLeftovers removes what a crashed run left behind: the routes
// carrying RouteProtocol on interface ifname (when it still exists) and the
// nftables table inet table (empty: the default name for ifname). Routes
// on other interfaces, which may belong to another running agent, are left
// alone. Missing pieces are not an error.
func CleanupLeftovers(ifname, table string, opts ...Option) error {
	const op = "route.CleanupLeftovers"
	cfg, err := FirewallConfig{Interface: ifname, TableName: table}.normalize(op)
	if err != nil {
		return err
	}
	o := newOptions(opts)
	var errs []error
	h, err := o.handle()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
	case err != nil:
		errs = append(errs, fmt.Errorf("interface %q: %w", ifname, err))
	default:
		errs = append(errs, deleteOurRoutes(h, link))
	}
	ns, err := o.ownNS()
	if err != nil {
		return fmt.Errorf("%s: %w", op, errors.Join(append(errs, err)...))
	}
	defer ns.Close()
	errs = append(errs, cleanupTable(ns, cfg.TableName, o))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func cleanupTable(ns netns.NsHandle, name string, o *options) error {
	conn, err := nftConn(ns)
	if err != nil {
		return err
	}
	ok, err := tableExists(conn, name)
	if err != nil || !ok {
		return err
	}
	o.log.Info("removing leftover nftables table", "table", name)
	return deleteTable(conn, name)
}
