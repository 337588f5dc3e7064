// Package meshmetrics exposes a mesh node's state as Prometheus metrics:
// per peer bytes, handshake age and path; the connection to the service;
// in kernel mode the TUN interface's packet and drop counters. Values are
// read from [mesh.Node.Status] at each scrape; nothing is kept between
// scrapes, and there are no process globals: each node gets a collector
// (and, with Handler, a registry) of its own.
//
// wireguard-go does not count packets per peer (its UAPI reports bytes
// only), so packet and drop counters are per interface, and only in
// kernel mode, where the kernel keeps them for the TUN device.
//
// The metric names and labels are listed in the README of the wiremesh
// command ("Agent metrics").
package meshmetrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wiremesh/wiremesh/mesh"
)

// StatusSource is what the metrics are read from: a *mesh.Node.
type StatusSource interface {
	Status() mesh.Status
}

// Collector is a prometheus.Collector of one node's metrics.
type Collector struct {
	src StatusSource
	now func() time.Time

	info, connected, revision, eventsDropped, peers, skipped *prometheus.Desc

	peerRx, peerTx, peerHandshake, peerHandshakeAge, peerPath *prometheus.Desc

	ifCounters []ifCounter
}

var _ prometheus.Collector = (*Collector)(nil)

// ifCounter is one counter of the kernel-mode TUN interface, read from
// /sys/class/net/IFACE/statistics/<file>.
type ifCounter struct {
	file string
	desc *prometheus.Desc
}

// peerLabels identify a peer: its hostname (not unique in a zone), its
// public key (unique) and its IPv4 tunnel address.
var peerLabels = []string{"peer", "public_key", "address"}

// NewCollector returns a collector reading src's status at each scrape.
func NewCollector(src StatusSource) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("wiremesh_agent_"+name, help, labels, nil)
	}
	c := &Collector{
		src: src,
		now: time.Now,

		info:          d("info", "The node: zone, hostname, IPv4 tunnel address, mode (userspace or kernel) and interface; always 1.", "zone", "hostname", "address", "mode", "interface"),
		connected:     d("control_connected", "1 when the node holds its watch stream to the service and is in sync, else 0 (it runs with the last known peers)."),
		revision:      d("zone_revision", "The last zone revision applied."),
		eventsDropped: d("events_dropped_total", "Events that Watch readers were too slow to take."),
		peers:         d("peers", "Peers the node knows."),
		skipped:       d("skipped_routes", "Kernel mode: peers' prefixes not routed through the TUN device (they overlap a network connected to this host)."),

		peerRx:           d("peer_receive_bytes_total", "Bytes received from the peer through the tunnel (WireGuard's count, including its overhead).", peerLabels...),
		peerTx:           d("peer_transmit_bytes_total", "Bytes sent to the peer through the tunnel.", peerLabels...),
		peerHandshake:    d("peer_last_handshake_timestamp_seconds", "Unix time of the last completed handshake with the peer; 0 if none yet.", peerLabels...),
		peerHandshakeAge: d("peer_handshake_age_seconds", "Seconds since the last completed handshake with the peer; absent if none yet (a live session re-handshakes every 2 minutes).", peerLabels...),
		peerPath:         d("peer_path", "The path to the peer as a label: direct (a UDP endpoint is known) or none (waiting for the peer to initiate); always 1.", append(peerLabels, "path", "endpoint")...),
	}
	for _, f := range []struct{ file, name, help string }{
		{"rx_packets", "receive_packets_total", "Packets the TUN interface received from the host (towards the mesh)."},
		{"tx_packets", "transmit_packets_total", "Packets the TUN interface delivered to the host (from the mesh)."},
		{"rx_bytes", "receive_bytes_total", "Bytes the TUN interface received from the host."},
		{"tx_bytes", "transmit_bytes_total", "Bytes the TUN interface delivered to the host."},
		{"rx_dropped", "receive_dropped_total", "Packets from the host the TUN interface dropped."},
		{"tx_dropped", "transmit_dropped_total", "Packets to the host the TUN interface dropped (the agent did not read them in time)."},
		{"rx_errors", "receive_errors_total", "Receive errors of the TUN interface."},
		{"tx_errors", "transmit_errors_total", "Transmit errors of the TUN interface."},
	} {
		c.ifCounters = append(c.ifCounters, ifCounter{f.file, d("interface_"+f.name, "Kernel mode: "+f.help, "interface")})
	}
	return c
}

// Describe sends the descriptors of every metric the collector makes.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.connected, c.revision, c.eventsDropped, c.peers, c.skipped,
		c.peerRx, c.peerTx, c.peerHandshake, c.peerHandshakeAge, c.peerPath} {
		ch <- d
	}
	for _, f := range c.ifCounters {
		ch <- f.desc
	}
}

// Collect reads the node's status and sends its metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Status()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	self := st.Self
	gauge(c.info, 1, self.Zone, self.Hostname, firstAddr(self.Addrs), self.Mode.String(), self.Interface)
	gauge(c.connected, boolValue(st.ControlConnected))
	gauge(c.revision, float64(st.Revision))
	counter(c.eventsDropped, float64(st.EventsDropped))
	gauge(c.peers, float64(len(st.Peers)))
	gauge(c.skipped, float64(len(st.SkippedRoutes)))
	for _, p := range st.Peers {
		l := []string{p.Hostname, p.PublicKey.String(), firstAddr(p.Addrs)}
		counter(c.peerRx, float64(p.RxBytes), l...)
		counter(c.peerTx, float64(p.TxBytes), l...)
		hs := 0.0
		if !p.LastHandshake.IsZero() {
			hs = float64(p.LastHandshake.UnixNano()) / 1e9
			gauge(c.peerHandshakeAge, max(now.Sub(p.LastHandshake).Seconds(), 0), l...)
		}
		gauge(c.peerHandshake, hs, l...)
		ep := ""
		if p.Endpoint.IsValid() {
			ep = p.Endpoint.String()
		}
		gauge(c.peerPath, 1, append(l, peerPath(p), ep)...)
	}
	if self.Interface != "" {
		for _, f := range c.ifCounters {
			if v, ok := readIfCounter(self.Interface, f.file); ok {
				counter(f.desc, float64(v), self.Interface)
			}
		}
	}
}

// peerPath is the path label of p: what Status says of the path.
func peerPath(p mesh.PeerStatus) string {
	if p.Endpoint.IsValid() {
		return "direct"
	}
	return "none"
}

func firstAddr[T interface{ String() string }](as []T) string {
	if len(as) == 0 {
		return ""
	}
	return as[0].String()
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// NewRegistry returns a registry of its own with src's collector and the
// Go runtime's and the process's collectors.
func NewRegistry(src StatusSource) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler returns an http.Handler serving src's metrics (NewRegistry) in
// the Prometheus exposition formats.
func Handler(src StatusSource) http.Handler {
	reg := NewRegistry(src)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
