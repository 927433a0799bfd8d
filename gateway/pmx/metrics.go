package pmx

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// Metrics are the PMXBCKUP gateway's Prometheus series.
type Metrics struct {
	connections prometheus.Counter
	packets     *prometheus.CounterVec
	errors      prometheus.Counter
	bytes       *prometheus.CounterVec
}

// NewMetrics registers the series on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_pmx_connections_total",
			Help: "PMXBCKUP connections accepted.",
		}),
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_pmx_packets_total",
			Help: "PMXBCKUP packets received, by type.",
		}, []string{"type"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_pmx_errors_total",
			Help: "Error packets sent to PMXBCKUP clients.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_pmx_chunk_bytes_total",
			Help: "Chunk bytes uploaded by or downloaded to PMXBCKUP clients.",
		}, []string{"direction"}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.packets, m.errors, m.bytes)
	}
	return m
}

func (m *Metrics) packet(p pmxproto.Packet) {
	if m == nil {
		return
	}
	m.packets.WithLabelValues(p.PacketType().String()).Inc()
	switch p := p.(type) {
	case *pmxproto.UploadChunk:
		m.bytes.WithLabelValues("uploaded").Add(float64(len(p.Data)))
	case *pmxproto.Chunk:
		m.bytes.WithLabelValues("downloaded").Add(float64(len(p.Data)))
	}
}
