//go:build linux

package mesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/route"
)

// The router side of a kernel-mode node: once it holds child prefixes, the
// host forwards between the mesh and them (IP forwarding on for the
// interfaces involved, firewall accept rules, optional masquerade), and
// every change to the host's forwarding settings is recorded so that a
// run after a crash restores it.

// syncRouterLocked enables forwarding and installs or updates the firewall
// once the node has child prefixes. Both stay until close, also when the
// prefixes are released: turning forwarding off under running traffic
// would be worse than an accept rule too many, and the table is updated.
func (k *kernelPlane) syncRouterLocked() error {
	prefixes := k.ownPrefixes()
	k.mu.Lock()
	filter, filterSet, applied := k.filter, k.filterSet, k.appliedFilter
	k.mu.Unlock()
	if len(prefixes) == 0 && k.fw == nil && filter == nil {
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
		k.fwRead.Store(fw)
		k.log.Info("mesh: forwarding between the mesh and the child prefixes", "prefixes", prefixes, "masquerade", k.masquerade)
	}
	if len(prefixes) > 0 {
		if err := k.enableForwardingLocked(prefixes, v4, v6); err != nil {
			return err
		}
	}
	if !slices.Equal(k.fw.Prefixes(), prefixes) {
		if err := k.fw.Update(prefixes); err != nil {
			return err
		}
		k.log.Info("mesh: child prefixes changed", "prefixes", prefixes)
	}
	if filterSet && filter != applied {
		if err := k.fw.SetInbound(inboundRules(filter)); err != nil {
			return fmt.Errorf("inbound filter: %w", err)
		}
		k.mu.Lock()
		k.appliedFilter = filter
		k.mu.Unlock()
		k.log.Info("mesh: inbound filter in the nftables rules", "rules", inboundRuleCount(filter))
	}
	return nil
}

// inboundRules converts the service's filter to the firewall's rules
// (nil: no filter).
func inboundRules(f *api.Filter) []route.InboundRule {
	if f == nil {
		return nil
	}
	out := make([]route.InboundRule, 0, len(f.Rules))
	for _, r := range f.Rules {
		ir := route.InboundRule{Src: r.Src, Dst: r.Dst, Proto: r.Proto}
		for _, p := range r.Ports {
			ir.Ports = append(ir.Ports, [2]uint16{p.First, p.Last})
		}
		out = append(out, ir)
	}
	return out
}

func inboundRuleCount(f *api.Filter) any {
	if f == nil {
		return "none (accept all)"
	}
	return len(f.Rules)
}

// enableForwardingLocked turns on forwarding for the packets a router
// must forward, per interface (see route.ForwardingSysctls for why, and
// what IPv6 needs): those arriving on the TUN device (towards the child
// prefixes) and those arriving on the interfaces facing the child
// prefixes (replies, and connections towards the mesh). The global
// net.ipv4.ip_forward is never written: turning it off on close would
// break Docker or another router that relies on it by then. Sysctls
// turned on already are left; new ones (a new prefix, another interface)
// are recorded, then turned on.
func (k *kernelPlane) enableForwardingLocked(prefixes []netip.Prefix, v4, v6 bool) error {
	ifs, err := route.PrefixInterfaces(prefixes, k.ifname)
	if err != nil {
		return err
	}
	paths, err := route.ForwardingSysctls(append([]string{k.ifname}, ifs...), v4, v6)
	if err != nil {
		return err
	}
	var fresh []string
	for _, p := range paths {
		if !k.fwdOn[p] {
			fresh = append(fresh, p)
		}
	}
	if len(fresh) == 0 {
		return nil
	}
	if err := k.recordForwarding(fresh); err != nil {
		return err
	}
	restore, err := route.EnableInterfaceForwarding(fresh, route.WithLogger(k.log.With("interface", k.ifname)))
	if err != nil {
		return err
	}
	k.restores = append(k.restores, restore)
	if k.fwdOn == nil {
		k.fwdOn = map[string]bool{}
	}
	for _, p := range fresh {
		k.fwdOn[p] = true
	}
	return nil
}

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
		if !route.IsForwardingSysctl(p) {
			delete(m, p)
		}
	}
	return m, nil
}

// recordForwarding notes the current values of the sysctls about to be
// turned on, unless an earlier run recorded them already, and saves the
// record before anything changes.
func (k *kernelPlane) recordForwarding(paths []string) error {
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
// run's) by the rules of route.EnableInterfaceForwarding (a value changed
// since, or a switch others rely on by now, stays), and removes the
// record.
func (k *kernelPlane) restoreForwarding() error {
	var errs []error
	for p, v := range k.fwdOrig {
		if err := route.RestoreForwardingSysctl(p, v, route.WithLogger(k.log)); err != nil {
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
