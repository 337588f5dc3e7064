//go:build linux

package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/wiremesh/wiremesh/route"
)

// kernelPreflight fails early, before registering, when kernel mode cannot
// work here: no TUN support, or no CAP_NET_ADMIN.
func kernelPreflight(c *config) error {
	if len(c.handlers) > 0 {
		return fmt.Errorf("WithPrefixHandler serves child-prefix traffic inside a userspace node: it does not work in kernel mode, where the host kernel forwards it")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("kernel mode needs /dev/net/tun to create TUN device %q: %w (use userspace mode instead)", c.ifname, err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err == nil && data[0].Effective&(1<<unix.CAP_NET_ADMIN) == 0 {
		return fmt.Errorf("kernel mode needs root (CAP_NET_ADMIN) to create TUN device %q and program routes: run as root, or use userspace mode", c.ifname)
	}
	return nil
}

// createTUN removes what a crashed run left behind for ifname (a TUN
// device nobody holds, routes, rules) and creates the TUN device.
func createTUN(ifname string, mtu int, log *slog.Logger) (tun.Device, error) {
	if err := removeStaleTUN(ifname, log); err != nil {
		return nil, err
	}
	if err := route.CleanupLeftovers(ifname, "", route.WithLogger(log)); err != nil {
		log.Warn("mesh: removing leftovers of an earlier run", "err", err)
	}
	// DOCKER-USER rules a crashed router (wiremesh router --docker) left
	// for this interface; a live router puts its own back after Join.
	if n, err := route.CleanupDockerUser(ifname, route.WithLogger(log)); err != nil {
		log.Warn("mesh: removing leftover DOCKER-USER rules", "err", err)
	} else if n > 0 {
		log.Info("mesh: removed leftover DOCKER-USER rules", "rules", n)
	}
	tdev, err := tun.CreateTUN(ifname, mtu)
	if err != nil {
		switch {
		case errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("create TUN device %q: %w (kernel mode needs root)", ifname, err)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("create TUN device %q: %w (another process holds it: choose another name with WithInterfaceName)", ifname, err)
		}
		return nil, fmt.Errorf("create TUN device %q: %w", ifname, err)
	}
	if err := markTUN(ifname); err != nil {
		tdev.Close()
		return nil, err
	}
	return tdev, nil
}

// tunAlias is the interface alias (ifalias, `ip link show` prints it)
// every TUN device of ours carries, so that a later run can tell its own
// leftover from someone else's device of the same name.
const tunAlias = "wiremesh"

func markTUN(ifname string) error {
	link, err := netlink.LinkByName(ifname)
	if err == nil {
		err = netlink.LinkSetAlias(link, tunAlias)
	}
	if err != nil {
		return fmt.Errorf("mark TUN device %q as wiremesh's (alias): %w", ifname, err)
	}
	return nil
}

// ours reports whether link is a device wiremesh made: it carries our
// alias, or routes of our protocol (route.RouteProtocol; an earlier
// version that set no alias).
func ours(link netlink.Link) bool {
	if link.Attrs().Alias == tunAlias {
		return true
	}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: route.RouteProtocol},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	return err == nil && len(rs) > 0
}

// removeStaleTUN deletes a TUN device named ifname that no process holds
// and that is ours (see ours): a persistent leftover of a crashed run. A
// device of another kind, one in use, or an idle TUN device that is not
// ours is an error: it is someone else's, and it stays.
func removeStaleTUN(ifname string, log *slog.Logger) error {
	link, err := netlink.LinkByName(ifname)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up interface %q: %w", ifname, err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
		return fmt.Errorf("interface %q already exists and is not a TUN device (type %s): choose another name with WithInterfaceName (--interface)", ifname, link.Type())
	}
	if tt.Queues > 0 {
		return fmt.Errorf("TUN device %q is in use by another process (another agent?): stop it or choose another name with WithInterfaceName (--interface)", ifname)
	}
	if !ours(link) {
		return fmt.Errorf("TUN device %q already exists and was not made by wiremesh (no %q alias): it belongs to another program; choose another name with WithInterfaceName (--interface), or delete it yourself (ip link del %s) if it is a leftover", ifname, tunAlias, ifname)
	}
	log.Info("mesh: removing leftover TUN device of an earlier run")
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("remove leftover TUN device %q: %w", ifname, err)
	}
	return nil
}
