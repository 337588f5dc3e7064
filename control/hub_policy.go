package control

// The hub's side of zone policies: each member of a zone with a policy is
// sent its own view (the peers it may exchange traffic with and its inbound
// filter, compiled by package policy) instead of the shared stream.
//
// Cost: in a zone without a policy nothing changes (each change is encoded
// once and shared). In a zone with one, a change that moves no member
// (endpoints) is still one shared line, sent to the members that see the
// device; a change of membership, addresses, prefixes, hostname, tags or
// policy recompiles the zone, O(rules × members), and compares each
// watcher's view, O(members) per watcher, sending only what differs.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/control/api"
	"github.com/wiremesh/wiremesh/control/policy"
	"github.com/wiremesh/wiremesh/control/store"
)

// zoneView is the hub's copy of a zone at its lastRev: the devices in
// stable slots (so a view is a bitset), the policy in force and its
// compilation. Guarded by hubZone.mu.
type zoneView struct {
	slots   []store.Device  // by slot; ID "" is a free slot
	members []policy.Member // parallel to slots
	slotOf  map[string]int  // device id → slot
	free    []int
	pol     *policy.Policy   // nil: the zone has no policy
	polRev  int64            // revision of the last policy change seen
	comp    *policy.Compiled // pol compiled against members; nil without a policy
}

// subView is what one subscriber was sent. The zero value is the whole
// zone without a filter (no policy, or an observer).
type subView struct {
	on     bool        // a policy applies: only peers are visible
	peers  policy.Set  // visible slots (not the device itself)
	filter *api.Filter // the device's inbound filter
}

// sees reports whether the view holds slot i.
func (s subView) sees(i int) bool { return !s.on || s.peers.Has(i) }

func sameFilter(a, b subView) bool {
	return a.on == b.on && (!a.on || policy.FiltersEqual(a.filter, b.filter))
}

func memberOf(d store.Device) policy.Member {
	return policy.Member{ID: d.ID, Hostname: d.Hostname, Tags: d.Tags, IPv4: d.IPv4, IPv6: d.IPv6, Prefixes: d.Prefixes}
}

func sameMember(a, b policy.Member) bool {
	return a.ID == b.ID && a.Hostname == b.Hostname && a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6 &&
		slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Prefixes, b.Prefixes)
}

// loadView reads the zone's devices and policy into z (z.mu held).
func (h *hub) loadView(ctx context.Context, z *hubZone) error {
	rev, devices, err := h.store.Snapshot(ctx, z.name)
	if err != nil {
		return err
	}
	z.view = zoneView{slotOf: make(map[string]int, len(devices))}
	for _, d := range devices {
		z.view.upsert(d)
	}
	if err := h.loadPolicy(ctx, z, 0); err != nil {
		return err
	}
	z.lastRev = rev
	return nil
}

// loadPolicy reads the zone's policy and compiles it. rev is the revision
// of the change that announced it (0 when loading). A stored document that
// does not parse (written by a newer version) denies everything.
func (h *hub) loadPolicy(ctx context.Context, z *hubZone, rev int64) error {
	zp, err := h.store.Policy(ctx, z.name)
	if err != nil {
		return fmt.Errorf("reading the policy of zone %q: %w", z.name, err)
	}
	v := &z.view
	v.polRev = max(rev, zp.Rev)
	v.pol, v.comp = nil, nil
	if zp.Document == nil {
		return nil
	}
	if v.pol, err = policy.Parse(zp.Document); err != nil {
		h.log.Error("the stored policy does not parse; denying everything in the zone", "zone", z.name, "err", err)
		v.pol = &policy.Policy{Tags: map[string][]string{}}
	}
	v.comp = policy.Compile(v.pol, v.members, nil)
	return nil
}

// upsert stores d and reports whether what the policy sees of it changed.
func (v *zoneView) upsert(d store.Device) bool {
	m := memberOf(d)
	i, ok := v.slotOf[d.ID]
	if !ok {
		if n := len(v.free); n > 0 {
			i, v.free = v.free[n-1], v.free[:n-1]
		} else {
			i = len(v.slots)
			v.slots, v.members = append(v.slots, store.Device{}), append(v.members, policy.Member{})
		}
		v.slotOf[d.ID] = i
	}
	changed := !ok || !sameMember(v.members[i], m)
	v.slots[i], v.members[i] = d, m
	return changed
}

// viewOf returns the view device should have now.
func (v *zoneView) viewOf(device string) subView {
	if v.pol == nil || device == "" {
		return subView{}
	}
	i, ok := v.slotOf[device]
	if !ok || v.comp == nil {
		return subView{on: true, peers: policy.NewSet(0), filter: &api.Filter{Rules: []api.FilterRule{}}}
	}
	return subView{on: true, peers: v.comp.Peers(i), filter: v.comp.Filter(i)}
}

// applyPolicy updates z's view with c and, when the zone has or had a
// policy, sends every subscriber its own events. It returns false when c
// is for the shared stream (no policy before or after). z.mu is held.
func (h *hub) applyPolicy(ctx context.Context, z *hubZone, c store.Change) (bool, error) {
	v := &z.view
	had := v.pol != nil
	relevant, dSlot := false, -1
	switch c.Kind {
	case store.ChangePolicy:
		if err := h.loadPolicy(ctx, z, c.Rev); err != nil {
			return true, err
		}
		relevant = true
	case store.ChangeUpsert:
		relevant = v.upsert(c.Device)
		dSlot = v.slotOf[c.Device.ID]
	case store.ChangeRemove:
		i, ok := v.slotOf[c.Device.ID]
		if ok {
			// Out of the compilation now; the slot is freed after the
			// views are compared.
			dSlot, relevant = i, true
			v.members[i] = policy.Member{}
			defer v.release(c.Device.ID)
		}
	case store.ChangePresence:
		// Nobody's view changes; snapshots show the new state.
		if i, ok := v.slotOf[c.Device.ID]; ok {
			v.slots[i].Online, v.slots[i].LastSeen = c.Device.Online, c.Device.LastSeen
			dSlot = i
		}
	}
	if !had && v.pol == nil {
		return c.Kind == store.ChangePolicy, nil
	}
	if v.pol != nil && relevant {
		v.comp = policy.Compile(v.pol, v.members, v.comp)
	}
	f := fanout{h: h, v: v, c: c, dSlot: dSlot, relevant: relevant, cache: map[int][]byte{}}
	if c.Kind != store.ChangePolicy && len(z.subs) > 0 {
		f.dLine = h.encode(c)
	}
	for sub := range z.subs {
		if line := f.linesFor(sub); len(line) > 0 {
			ev := hubEvent{rev: c.Rev, line: line, at: time.Now()}
			switch c.Kind {
			case store.ChangeRemove:
				ev.removed = c.Device.ID
			case store.ChangePresence:
				ev.presenceOf = c.Device.ID
			}
			h.send(sub, ev)
		}
	}
	return true, nil
}

// release frees a removed device's slot.
func (v *zoneView) release(id string) {
	i := v.slotOf[id]
	delete(v.slotOf, id)
	v.slots[i], v.members[i] = store.Device{}, policy.Member{}
	v.free = append(v.free, i)
}

// fanout computes each subscriber's lines for one change.
type fanout struct {
	h        *hub
	v        *zoneView
	c        store.Change
	dSlot    int    // the slot of the changed device (-1: a policy change)
	dLine    []byte // the change's own line (nil: a policy change)
	relevant bool   // views may have changed
	cache    map[int][]byte
}

// linesFor returns sub's lines for the change and records its new view.
func (f *fanout) linesFor(sub *subscriber) []byte {
	c, dev := f.c, f.c.Device.ID
	switch {
	case sub.device == "": // an observer: the whole zone
		return f.dLine
	case c.Kind == store.ChangeRemove && dev == sub.device:
		return f.dLine // its own removal ends its stream
	case !f.relevant:
		if dev == sub.device || sub.view.sees(f.dSlot) {
			return f.dLine
		}
		return nil
	}
	old, next := sub.view, f.v.viewOf(sub.device)
	sub.view = next
	var out []byte
	switch c.Kind {
	case store.ChangeUpsert:
		if dev == sub.device || next.sees(f.dSlot) {
			out = append(out, f.dLine...)
		}
	case store.ChangeRemove:
		if old.sees(f.dSlot) {
			out = append(out, f.dLine...)
		}
	}
	self, ok := f.v.slotOf[sub.device]
	if !ok {
		self = -1
	}
	for i := range f.v.slots {
		if i == self || i == f.dSlot || f.v.slots[i].ID == "" {
			continue
		}
		switch was, is := old.sees(i), next.sees(i); {
		case was && !is:
			out = append(out, f.line(i, store.ChangeRemove)...)
		case is && !was:
			out = append(out, f.line(i, store.ChangeUpsert)...)
		}
	}
	if !sameFilter(old, next) {
		out = append(out, encodeLine(api.WatchEvent{Type: api.EventFilter, Revision: c.Rev, Filter: next.filter})...)
	}
	return out
}

// line returns the upsert or remove line of the device in slot i, encoded
// once per change.
func (f *fanout) line(i int, kind store.ChangeKind) []byte {
	key := i*2 + int(kind-store.ChangeUpsert)
	if b, ok := f.cache[key]; ok {
		return b
	}
	b := f.h.encode(store.Change{Rev: f.c.Rev, Zone: f.c.Zone, Kind: kind, Device: f.v.slots[i]})
	f.cache[key] = b
	return b
}

// snapshot brings sub's zone up to date and returns sub's snapshot line
// and its revision; sub's view becomes that snapshot. Live events at or
// below the revision are to be skipped.
func (h *hub) snapshot(sub *subscriber) ([]byte, int64) {
	z := sub.zone
	z.mu.Lock()
	defer z.mu.Unlock()
	h.updateLocked(z)
	v := &z.view
	sub.view = v.viewOf(sub.device)
	ev := api.WatchEvent{Type: api.EventSnapshot, Revision: z.lastRev, Peers: []api.Peer{}}
	if sub.view.on {
		ev.Filter = sub.view.filter
	}
	for i, d := range v.slots {
		if d.ID != "" && (d.ID == sub.device || sub.view.sees(i)) {
			ev.Peers = append(ev.Peers, toPeer(d))
		}
	}
	slices.SortFunc(ev.Peers, func(a, b api.Peer) int { return a.IPv4.Compare(b.IPv4) })
	return encodeLine(ev), z.lastRev
}

// needsSnapshot reports whether a stream resuming after since must start
// with a snapshot: the zone has a policy (the member's view is not the
// shared log), or a policy change came at or after since.
func (h *hub) needsSnapshot(sub *subscriber, since int64) bool {
	z := sub.zone
	z.mu.Lock()
	defer z.mu.Unlock()
	h.updateLocked(z)
	return z.view.pol != nil || since <= z.view.polRev
}

// present brings sub's zone up to date and reports whether sub's device
// is in it, and at which revision. A watch stream checks once, after its
// backlog: a device deleted later is told by its remove event.
func (h *hub) present(sub *subscriber) (bool, int64) {
	z := sub.zone
	z.mu.Lock()
	defer z.mu.Unlock()
	h.updateLocked(z)
	_, ok := z.view.slotOf[sub.device]
	return ok, z.lastRev
}

// isPolicyChange reports whether any of cs is a policy change.
func isPolicyChange(cs []store.Change) bool {
	return slices.ContainsFunc(cs, func(c store.Change) bool { return c.Kind == store.ChangePolicy })
}
