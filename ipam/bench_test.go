package ipam

import (
	"net/netip"
	"sync"
	"testing"
	"time"
)

// benchFixture is a registry of 100,000 prefixes: every /24 of 10.0.0.0/9
// (32,768), 57,232 /28s spread over 10.128.0.0/9 (every 8th /28), and
// 10,000 IPv6 /64s. fresh holds prefixes overlapping nothing: /28s in the
// gaps between the registered ones.
type benchFixture struct {
	r       *Registry
	entries []Entry
	fresh   []netip.Prefix
}

var (
	fixtureOnce sync.Once
	fixture     benchFixture
)

func registryFixture(b *testing.B) *benchFixture {
	fixtureOnce.Do(func() {
		r := NewRegistry()
		add := func(p netip.Prefix, owner string) {
			if err := r.Add(p, owner); err != nil {
				panic(err)
			}
			fixture.entries = append(fixture.entries, Entry{Prefix: p, Owner: owner})
		}
		for i := range 32768 {
			add(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24), "node24")
		}
		for i := range 57232 {
			v := uint32(10<<24|1<<23) + uint32(i)*8*16 // every 8th /28 of 10.128.0.0/9
			add(netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28), "node28")
			if i%7 == 0 {
				v += 3 * 16
				fixture.fresh = append(fixture.fresh, netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 28))
			}
		}
		for i := range 10000 {
			add(netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 0, 0, byte(i >> 8), byte(i)}), 64), "node64")
		}
		fixture.r = r
	})
	if fixture.r.Len() != 100000 {
		b.Fatalf("fixture has %d prefixes", fixture.r.Len())
	}
	return &fixture
}

// linearConflict is the baseline: a scan of every entry.
func linearConflict(entries []Entry, p netip.Prefix) (Entry, bool) {
	for _, e := range entries {
		if Overlaps(e.Prefix, p) {
			return e, true
		}
	}
	return Entry{}, false
}

// baselineRuns bounds the (slow) linear baseline's iterations.
func baselineRuns(n int) int { return min(n, 300) }

// BenchmarkRegistryConflict measures Conflict on fresh /28s (the worst
// case: every supernet length probed plus a tree search) and on
// conflicting prefixes, and reports the ratio against a linear scan
// measured in the same run.
func BenchmarkRegistryConflict(b *testing.B) {
	fx := registryFixture(b)
	queries := make([]netip.Prefix, 0, 2*len(fx.fresh))
	for i, p := range fx.fresh {
		queries = append(queries, p)
		queries = append(queries, fx.entries[(i*7919)%len(fx.entries)].Prefix)
	}
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		q := queries[i%len(queries)]
		if _, ok := fx.r.Conflict(q); ok != (i%2 == 1) {
			b.Fatalf("Conflict(%v) = %v", q, ok)
		}
	}
	indexed := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	n := baselineRuns(b.N)
	start = time.Now()
	for i := range n {
		q := queries[i%len(queries)]
		if _, ok := linearConflict(fx.entries, q); ok != (i%2 == 1) {
			b.Fatalf("linear Conflict(%v) = %v", q, ok)
		}
	}
	linear := float64(time.Since(start).Nanoseconds()) / float64(n)
	b.ReportMetric(linear, "linear_ns/op")
	b.ReportMetric(linear/indexed, "x_faster_than_linear")
}

// BenchmarkRegistryAdd measures Add of a fresh prefix into the 100,000
// prefix registry (each op is Add plus the Remove that restores the
// fixture), against a linear conflict scan plus append.
func BenchmarkRegistryAdd(b *testing.B) {
	fx := registryFixture(b)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		p := fx.fresh[i%len(fx.fresh)]
		if err := fx.r.Add(p, "fresh"); err != nil {
			b.Fatal(err)
		}
		fx.r.Remove(p)
	}
	indexed := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	n := baselineRuns(b.N)
	entries := fx.entries[:len(fx.entries):len(fx.entries)]
	start = time.Now()
	for i := range n {
		p := fx.fresh[i%len(fx.fresh)]
		if _, ok := linearConflict(entries, p); ok {
			b.Fatal("conflict")
		}
		entries = append(entries, Entry{Prefix: p, Owner: "fresh"})
		entries = entries[:len(entries)-1]
	}
	linear := float64(time.Since(start).Nanoseconds()) / float64(n)
	b.ReportMetric(linear, "linear_ns/op")
	b.ReportMetric(linear/indexed, "x_faster_than_linear")
}

// linearPool is the baseline allocator: scan from index 1 for a free slot.
type linearPool struct {
	used []bool // by host index
}

func (lp *linearPool) allocate() (uint64, bool) {
	for i := 1; i < len(lp.used); i++ {
		if !lp.used[i] {
			lp.used[i] = true
			return uint64(i), true
		}
	}
	return 0, false
}

// BenchmarkPoolAllocate measures lowest-free Allocate on a /16 with every
// address in use but one (freed each op at a spread-out index), against a
// linear scan in the same run.
func BenchmarkPoolAllocate(b *testing.B) {
	p, err := NewPool(DefaultIPv4PoolPrefix)
	if err != nil {
		b.Fatal(err)
	}
	lp := &linearPool{used: make([]bool, p.Capacity()+1)}
	for range p.Capacity() {
		if _, err := p.Allocate(netip.Addr{}); err != nil {
			b.Fatal(err)
		}
		lp.allocate()
	}
	if _, err := p.Allocate(netip.Addr{}); err == nil {
		b.Fatal("full pool allocated")
	}
	idx := func(i int) uint64 { return 1 + uint64(i*40503)%p.Capacity() }
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		a, _ := p.Addr(idx(i))
		p.Release(a)
		got, err := p.Allocate(netip.Addr{})
		if err != nil || got != a {
			b.Fatalf("Allocate = %v, %v; want %v", got, err, a)
		}
	}
	indexed := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	n := baselineRuns(b.N)
	start = time.Now()
	for i := range n {
		lp.used[idx(i)] = false
		if got, _ := lp.allocate(); got != idx(i) {
			b.Fatalf("linear allocate = %d", got)
		}
	}
	linear := float64(time.Since(start).Nanoseconds()) / float64(n)
	b.ReportMetric(linear, "linear_ns/op")
	b.ReportMetric(linear/indexed, "x_faster_than_linear")
}

// BenchmarkPoolExhausted measures the error path on a full /16.
func BenchmarkPoolExhausted(b *testing.B) {
	p, err := NewPool(DefaultIPv4PoolPrefix)
	if err != nil {
		b.Fatal(err)
	}
	for range p.Capacity() {
		if _, err := p.Allocate(netip.Addr{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := p.Allocate(netip.Addr{}); err == nil {
			b.Fatal("full pool allocated")
		}
	}
}

func BenchmarkParsePrefix(b *testing.B) {
	for range b.N {
		if _, err := ParsePrefix("172.24.0.0/24", Policy{}); err != nil {
			b.Fatal(err)
		}
	}
}
