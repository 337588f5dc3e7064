package ipam

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{
		"172.24.0.0/24", "10.1.2.3/16", "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0",
		"fe80::%eth0/64", "10.0.0.0/024", " 10.0.0.0/8", "fd00:1::/64", "2001:db8::1/128",
		"0.0.0.0/1", "garbage", "", "1.2.3.4", "::ffff:1.2.3.4/128", "FD00::/8",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, exit bool) {
		pol := Policy{AllowDefaultRoute: exit}
		p, err := ParsePrefix(s, pol)
		if err != nil {
			var pe *PrefixError
			if !errors.As(err, &pe) || !errors.Is(err, ErrInvalidPrefix) || pe.Input != s || pe.Reason == "" {
				t.Fatalf("ParsePrefix(%q) error %v is not a proper *PrefixError", s, err)
			}
			if p.IsValid() {
				t.Fatalf("ParsePrefix(%q) returned %v with error %v", s, p, err)
			}
			return
		}
		if !p.IsValid() || p != p.Masked() {
			t.Fatalf("ParsePrefix(%q) = %v: not canonical", s, p)
		}
		if err := ValidateChildPrefix(p, pol); err != nil {
			t.Fatalf("ParsePrefix(%q) = %v, but ValidateChildPrefix: %v", s, p, err)
		}
		// Whatever the standard parser accepts of the same text agrees.
		if std, err := netip.ParsePrefix(s); err != nil || std != p {
			t.Fatalf("ParsePrefix(%q) = %v, netip.ParsePrefix = %v, %v", s, p, std, err)
		}
		again, err := ParsePrefix(p.String(), pol)
		if err != nil || again != p || again.String() != p.String() {
			t.Fatalf("ParsePrefix(%q) = %v does not round-trip: %v, %v", s, p, again, err)
		}
		for _, r := range reserved {
			if p.Bits() > 0 && Overlaps(p, r.prefix) {
				t.Fatalf("ParsePrefix(%q) = %v overlaps reserved %v", s, p, r.prefix)
			}
		}
		if p.Bits() == 0 && !exit {
			t.Fatalf("ParsePrefix(%q) = %v: default route without exit nodes", s, p)
		}
	})
}

// bruteRegistry is the O(n) model FuzzRegistry checks Registry against.
type bruteRegistry []Entry

func (b bruteRegistry) conflict(p netip.Prefix) (Entry, bool) {
	for _, e := range b {
		if Overlaps(e.Prefix, p) {
			return e, true
		}
	}
	return Entry{}, false
}

func (b bruteRegistry) lookup(a netip.Addr) (Entry, bool) {
	best, found := Entry{}, false
	for _, e := range b {
		if e.Prefix.Contains(a) && (!found || e.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = e, true
		}
	}
	return best, found
}

// fuzzPrefix builds a small prefix from fuzz bytes, concentrated in a few
// ranges so that overlaps are common.
func fuzzPrefix(b []byte) netip.Prefix {
	if b[0]&1 == 0 {
		a := [4]byte{10, b[1] & 3, b[2], b[3]}
		return netip.PrefixFrom(netip.AddrFrom4(a), 6+int(b[4])%27).Masked()
	}
	var a [16]byte
	a[0], a[1], a[2], a[15] = 0xfd, b[1]&3, b[2], b[3]
	return netip.PrefixFrom(netip.AddrFrom16(a), 6+int(b[4])%123).Masked()
}

func FuzzRegistry(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 10, 0, 0, 0, 0, 18, 2, 1, 0, 0, 0, 10})
	f.Add([]byte{1, 1, 9, 9, 100, 3, 1, 9, 9, 60, 2, 1, 9, 9, 100})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := NewRegistry()
		var model bruteRegistry
		for len(ops) >= 6 {
			op, pb := ops[0], ops[1:6]
			ops = ops[6:]
			p := fuzzPrefix(pb)
			owner := string(rune('a' + op%3))

			// Conflict and Lookup agree with the model before every op.
			got, gotOK := r.Conflict(p)
			_, wantOK := model.conflict(p)
			if gotOK != wantOK || gotOK && (!Overlaps(got.Prefix, p) || !slices.Contains(model, got)) {
				t.Fatalf("Conflict(%v) = %v, %v; model says %v", p, got, gotOK, wantOK)
			}
			le, lok := r.Lookup(p.Addr())
			me, mok := model.lookup(p.Addr())
			if lok != mok || le != me {
				t.Fatalf("Lookup(%v) = %v, %v; model %v, %v", p.Addr(), le, lok, me, mok)
			}

			switch op % 4 {
			case 0, 1: // add
				err := r.Add(p, owner)
				switch {
				case !wantOK:
					if err != nil {
						t.Fatalf("Add(%v) = %v, want nil", p, err)
					}
					model = append(model, Entry{Prefix: p, Owner: owner})
				case got.Prefix == p && got.Owner == owner:
					if err != nil {
						t.Fatalf("re-Add(%v) = %v, want nil", p, err)
					}
				default:
					var ce *ConflictError
					if !errors.As(err, &ce) || ce.Prefix != p || ce.Existing != got.Prefix || ce.Owner != got.Owner {
						t.Fatalf("Add(%v) = %v, want conflict with %v", p, err, got)
					}
				}
			case 2: // remove something present, chosen by the bytes
				if len(model) == 0 {
					continue
				}
				i := int(pb[2]) % len(model)
				if !r.Remove(model[i].Prefix) {
					t.Fatalf("Remove(%v) = false", model[i].Prefix)
				}
				model = slices.Delete(model, i, i+1)
			case 3: // remove a probably absent prefix
				_, present := r.Get(p)
				if r.Remove(p) != present {
					t.Fatalf("Remove(%v) != %v", p, present)
				}
				if present {
					model = slices.DeleteFunc(model, func(e Entry) bool { return e.Prefix == p })
				}
			}
			if r.Len() != len(model) {
				t.Fatalf("Len = %d, model %d", r.Len(), len(model))
			}
		}
		want := slices.Clone(model)
		slices.SortFunc(want, func(a, b Entry) int {
			if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
				return c
			}
			return a.Prefix.Bits() - b.Prefix.Bits()
		})
		if got := r.All(); !slices.Equal(got, want) {
			t.Fatalf("All = %v, want %v", got, want)
		}
	})
}
