//go:build linux

package mesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/route"
)

// The router side of a kernel-mode node: once it holds child prefixes, the
// host forwards between the mesh and them (IP forwarding on, firewall
// accept rules, optional masquerade), and every change to the host's
// forwarding settings is recorded so that a run after a crash restores it.

// syncRouterLocked enables forwarding and installs or updates the firewall
// once the node has child prefixes. Both stay until close, also when the
// prefixes are released: turning forwarding off under running traffic
// would be worse than an accept rule too many, and the table is updated.
func (k *kernelPlane) syncRouterLocked() error {
	prefixes := k.ownPrefixes()
	if len(prefixes) == 0 && k.fw == nil {
		return nil
	}
	var v4, v6 bool
	for _, p := range prefixes {
		v4 = v4 || p.Addr().Is4()
		v6 = v6 || p.Addr().Is6()
	}
	// The firewall comes first: forwarding without its rules would let a
	// peer relay packets through this host to anywhere it can reach.
	if k.fw == nil {
		fw, err := route.NewFirewall(route.FirewallConfig{
			Interface:     k.ifname,
			ChildPrefixes: prefixes,
			Masquerade:    k.masquerade,
		}, route.WithLogger(k.log))
		if err != nil {
			return err
		}
		k.fw = fw
		k.log.Info("mesh: forwarding between the mesh and the child prefixes", "prefixes", prefixes, "masquerade", k.masquerade)
	}
	if v4 && !k.fwd4 || v6 && !k.fwd6 {
		if err := k.recordForwarding(v4 && !k.fwd4, v6 && !k.fwd6); err != nil {
			return err
		}
		restore, err := route.EnableForwarding(v4 && !k.fwd4, v6 && !k.fwd6, route.WithLogger(k.log))
		if err != nil {
			return err
		}
		k.restores = append(k.restores, restore)
		k.fwd4, k.fwd6 = k.fwd4 || v4, k.fwd6 || v6
	}
	if !slices.Equal(k.fw.Prefixes(), prefixes) {
		if err := k.fw.Update(prefixes); err != nil {
			return err
		}
		k.log.Info("mesh: child prefixes changed", "prefixes", prefixes)
	}
	return nil
}

// Forwarding sysctls as route.EnableForwarding writes them.
const (
	sysctlForward4 = "/proc/sys/net/ipv4/ip_forward"
	sysctlForward6 = "/proc/sys/net/ipv6/conf/all/forwarding"
)

// forwardingFile is where a node with a state directory records the
// forwarding settings it changed.
func forwardingFile(stateDir, ifname string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, "forwarding-"+ifname+".json")
}

// loadForwarding reads the record of an earlier run; none is no error.
func loadForwarding(path string) (map[string]string, error) {
	m := map[string]string{}
	if path == "" {
		return m, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return m, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		return nil, fmt.Errorf("forwarding record %s: %w", path, err)
	}
	for p := range m {
		if p != sysctlForward4 && p != sysctlForward6 {
			delete(m, p)
		}
	}
	return m, nil
}

// recordForwarding notes the current values of the sysctls about to be
// turned on, unless an earlier run recorded them already, and saves the
// record before anything changes.
func (k *kernelPlane) recordForwarding(v4, v6 bool) error {
	var paths []string
	if v4 {
		paths = append(paths, sysctlForward4)
	}
	if v6 {
		paths = append(paths, sysctlForward6)
	}
	changed := false
	for _, p := range paths {
		if _, ok := k.fwdOrig[p]; ok {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if v := strings.TrimSpace(string(b)); v != "1" {
			k.fwdOrig[p] = v
			changed = true
		}
	}
	if !changed || k.fwdFile == "" {
		return nil
	}
	b, err := json.Marshal(k.fwdOrig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(k.fwdFile, b, 0o600); err != nil {
		return fmt.Errorf("forwarding record: %w", err)
	}
	return nil
}

// restoreForwarding puts back every recorded original value (this run's,
// already restored by route's restore functions, and an earlier crashed
// run's) and removes the record.
func (k *kernelPlane) restoreForwarding() error {
	var errs []error
	for p, v := range k.fwdOrig {
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", p, err))
		}
	}
	if k.fwdFile != "" && len(errs) == 0 {
		if err := os.Remove(k.fwdFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
