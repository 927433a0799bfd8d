package chunk

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Metrics are the chunk service's Prometheus series.
type Metrics struct {
	uploads       *prometheus.CounterVec
	bytesReceived prometheus.Counter
	bytesStored   prometheus.Counter
	bytesServed   prometheus.Counter
	idsChecked    prometheus.Counter
	cacheHits     prometheus.Counter
	quarantined   prometheus.Counter
}

// NewMetrics registers the series on reg; nil leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_uploads_total",
			Help: "Chunk uploads by result: created, duplicate, or the gRPC code of a refusal.",
		}, []string{"result"}),
		bytesReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_received_bytes_total",
			Help: "Uncompressed bytes of verified chunk uploads.",
		}),
		bytesStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_stored_bytes_total",
			Help: "Compressed bytes written to storage for new chunks.",
		}),
		bytesServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_served_bytes_total",
			Help: "Stored bytes read for downloads.",
		}),
		idsChecked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_existence_checks_total",
			Help: "Ids checked by FindMissingChunks.",
		}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunk_presence_cache_hits_total",
			Help: "Existence checks answered by the presence cache.",
		}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_chunks_quarantined_total",
			Help: "Corrupt chunks this process moved to quarantine/ (found by a read or by verify).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.uploads, m.bytesReceived, m.bytesStored, m.bytesServed, m.idsChecked, m.cacheHits, m.quarantined)
	}
	return m
}

func (m *Metrics) observeUpload(created bool, err error) {
	switch {
	case err != nil:
		m.uploads.WithLabelValues(apierr.Code(err).String()).Inc()
	case created:
		m.uploads.WithLabelValues("created").Inc()
	default:
		m.uploads.WithLabelValues("duplicate").Inc()
	}
}
