package route

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
)

// Memory is the userspace route table: the same Apply semantics as the
// kernel table, kept in memory, for netstack mode, where Lookup decides
// whether a destination belongs to the mesh. It is safe for concurrent use.
type Memory struct {
	connected []Connected // immutable after NewMemory

	mu struct {
		sync.Mutex
		closed bool
		addrs  []netip.Prefix
		routes []netip.Prefix
	}
}

var _ Table = (*Memory)(nil)

// NewMemory returns an empty userspace table. connected lists networks this
// node reaches directly (a userspace router's own child prefixes, the host's
// networks it forwards to); desired routes overlapping one are skipped just
// as the kernel table skips routes overlapping directly connected networks.
func NewMemory(connected ...Connected) *Memory {
	m := &Memory{}
	for _, c := range connected {
		if c.Prefix.IsValid() {
			m.connected = append(m.connected, Connected{Prefix: c.Prefix.Masked(), Interface: c.Interface})
		}
	}
	return m
}

// Apply replaces the table's contents with d, minus skipped routes.
func (m *Memory) Apply(ctx context.Context, d Desired) (Result, error) {
	n, err := normalize("route.Memory.Apply", d)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return Result{}, net.ErrClosed
	}
	p := makePlan(n, current{present: m.mu.addrs, ours: m.mu.addrs, routes: m.mu.routes, connected: m.connected})
	m.mu.addrs = n.addrs
	m.mu.routes = p.routes
	return Result{Skipped: p.skipped}, nil
}

// Lookup returns the longest installed route or address prefix covering a.
func (m *Memory) Lookup(a netip.Addr) (netip.Prefix, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return netip.Prefix{}, false
	}
	return longestMatch(slices.Concat(m.mu.addrs, m.mu.routes), a)
}

// Routes returns the installed routes, sorted.
func (m *Memory) Routes() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mu.routes)
}

// Addrs returns the addresses, sorted.
func (m *Memory) Addrs() []netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mu.addrs)
}

// Close empties the table; later calls return net.ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return net.ErrClosed
	}
	m.mu.closed = true
	m.mu.addrs, m.mu.routes = nil, nil
	return nil
}
