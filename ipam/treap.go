package ipam

import "net/netip"

// treap is an ordered set of entries keyed by prefix, sorted by address
// (IPv4 before IPv6) then prefix length. Expected O(log n) per operation;
// priorities come from a per-treap splitmix64 sequence, so no global state.
// Callers never insert a key twice nor remove a missing key (the Registry's
// map says what is present).
type treap struct {
	root *tnode
	seed uint64
}

type tnode struct {
	e           Entry
	prio        uint64
	left, right *tnode
}

// prefixLess orders prefixes by address, then length.
func prefixLess(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

func (t *treap) nextPrio() uint64 {
	t.seed += 0x9e3779b97f4a7c15
	z := t.seed
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (t *treap) insert(e Entry) {
	t.root = tinsert(t.root, &tnode{e: e, prio: t.nextPrio()})
}

func tinsert(t, n *tnode) *tnode {
	if t == nil {
		return n
	}
	if n.prio > t.prio {
		n.left, n.right = tsplit(t, n.e.Prefix)
		return n
	}
	if prefixLess(n.e.Prefix, t.e.Prefix) {
		t.left = tinsert(t.left, n)
	} else {
		t.right = tinsert(t.right, n)
	}
	return t
}

// tsplit splits t into keys < k and keys >= k.
func tsplit(t *tnode, k netip.Prefix) (l, r *tnode) {
	if t == nil {
		return nil, nil
	}
	if prefixLess(t.e.Prefix, k) {
		t.right, r = tsplit(t.right, k)
		return t, r
	}
	l, t.left = tsplit(t.left, k)
	return l, t
}

// tmerge joins a and b, every key of a being below every key of b.
func tmerge(a, b *tnode) *tnode {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = tmerge(a.right, b)
		return a
	default:
		b.left = tmerge(a, b.left)
		return b
	}
}

func (t *treap) remove(k netip.Prefix) {
	t.root = tremove(t.root, k)
}

func tremove(t *tnode, k netip.Prefix) *tnode {
	if t == nil {
		return nil
	}
	if t.e.Prefix == k {
		return tmerge(t.left, t.right)
	}
	if prefixLess(k, t.e.Prefix) {
		t.left = tremove(t.left, k)
	} else {
		t.right = tremove(t.right, k)
	}
	return t
}

// set replaces the entry stored under e.Prefix.
func (t *treap) set(e Entry) {
	for n := t.root; n != nil; {
		if n.e.Prefix == e.Prefix {
			n.e = e
			return
		}
		if prefixLess(e.Prefix, n.e.Prefix) {
			n = n.left
		} else {
			n = n.right
		}
	}
}

// ceil returns the first entry with key >= k.
func (t *treap) ceil(k netip.Prefix) (Entry, bool) {
	var best *tnode
	for n := t.root; n != nil; {
		if prefixLess(n.e.Prefix, k) {
			n = n.right
		} else {
			best = n
			n = n.left
		}
	}
	if best == nil {
		return Entry{}, false
	}
	return best.e, true
}

// appendAll appends every entry in order.
func (t *treap) appendAll(dst []Entry) []Entry {
	var stack []*tnode
	for n := t.root; n != nil || len(stack) > 0; {
		for ; n != nil; n = n.left {
			stack = append(stack, n)
		}
		n = stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		dst = append(dst, n.e)
		n = n.right
	}
	return dst
}
