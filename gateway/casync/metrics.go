package casync

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the casync gateway's Prometheus series.
type Metrics struct {
	sessions *prometheus.CounterVec
	chunks   *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

// NewMetrics registers the series on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_casync_sessions_total",
			Help: "casync sessions by verb (pull, push) and result (ok, aborted).",
		}, []string{"verb", "result"}),
		chunks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_casync_chunks_total",
			Help: "Chunks sent to (pull) or received from (push) casync clients, and MISSING answers.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_casync_chunk_bytes_total",
			Help: "Chunk payload bytes sent to (pull) or received from (push) casync clients.",
		}, []string{"direction"}),
	}
	if reg != nil {
		reg.MustRegister(m.sessions, m.chunks, m.bytes)
	}
	return m
}

func (m *Metrics) session(verb string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "aborted"
	}
	m.sessions.WithLabelValues(verb, result).Inc()
}

func (m *Metrics) chunk(direction string, n int) {
	if m == nil {
		return
	}
	m.chunks.WithLabelValues(direction).Inc()
	m.bytes.WithLabelValues(direction).Add(float64(n))
}
