package admin

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the AdminService's Prometheus series.
type metrics struct {
	gcRuns         *prometheus.CounterVec
	gcRunning      prometheus.Gauge
	gcDeleted      prometheus.Counter
	gcDeletedBytes prometheus.Counter
	gcLastSuccess  prometheus.Gauge
	gcLastDuration prometheus.Gauge
	verifyChunks   prometheus.Counter
	verifyBytes    prometheus.Counter
	verifyProblems *prometheus.CounterVec
	pruneRemoved   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	m := &metrics{
		gcRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_gc_runs_total", Help: "Garbage collections by result (ok, error).",
		}, []string{"result"}),
		gcRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chunkbridge_gc_running", Help: "1 while a garbage collection runs in this process.",
		}),
		gcDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_gc_deleted_chunks_total", Help: "Chunks deleted by garbage collection.",
		}),
		gcDeletedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_gc_deleted_bytes_total", Help: "Stored bytes freed by garbage collection.",
		}),
		gcLastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chunkbridge_gc_last_success_timestamp_seconds", Help: "When the last successful garbage collection finished.",
		}),
		gcLastDuration: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chunkbridge_gc_last_duration_seconds", Help: "How long the last successful garbage collection took.",
		}),
		verifyChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_verify_chunks_total", Help: "Chunks read back and re-hashed by verification.",
		}),
		verifyBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_verify_read_bytes_total", Help: "Stored bytes read by verification.",
		}),
		verifyProblems: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkbridge_verify_problems_total", Help: "Problems found by verification, by kind (corrupt, missing, unreadable, unavailable, index_corrupt).",
		}, []string{"kind"}),
		pruneRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chunkbridge_prune_removed_snapshots_total", Help: "Snapshots deleted by prune.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.gcRuns, m.gcRunning, m.gcDeleted, m.gcDeletedBytes, m.gcLastSuccess, m.gcLastDuration,
			m.verifyChunks, m.verifyBytes, m.verifyProblems, m.pruneRemoved, &storeCollector{s})
	}
	return m
}

// storeCollector reports the last count of the store. A scrape never waits
// for a count: when the figures are older than the stats TTL it starts one
// in the background and reports what it has.
type storeCollector struct{ s *Server }

var storeDescs = struct {
	chunks, stored, logical, referenced, dedup, compression, indexes, snapshots, files, groups, at *prometheus.Desc
	tenantLogical, tenantStored, tenantLogicalQuota, tenantStoredQuota                             *prometheus.Desc
}{
	chunks:      prometheus.NewDesc("chunkbridge_store_chunks", "Chunks in the store.", nil, nil),
	stored:      prometheus.NewDesc("chunkbridge_store_stored_bytes", "Bytes the stored (compressed) chunks occupy.", nil, nil),
	logical:     prometheus.NewDesc("chunkbridge_store_logical_bytes", "Uncompressed bytes of the stored chunks.", nil, nil),
	referenced:  prometheus.NewDesc("chunkbridge_store_referenced_bytes", "Bytes the indexes and snapshot files describe.", nil, nil),
	dedup:       prometheus.NewDesc("chunkbridge_store_dedup_ratio", "Referenced bytes / logical bytes stored.", nil, nil),
	compression: prometheus.NewDesc("chunkbridge_store_compression_ratio", "Logical bytes / stored bytes.", nil, nil),
	indexes:     prometheus.NewDesc("chunkbridge_catalog_casync_indexes", "casync indexes in the catalog.", nil, nil),
	snapshots:   prometheus.NewDesc("chunkbridge_catalog_snapshots", "PMXBCKUP snapshots in the catalog.", nil, nil),
	files:       prometheus.NewDesc("chunkbridge_catalog_snapshot_files", "PMXBCKUP snapshot files in the catalog.", nil, nil),
	groups:      prometheus.NewDesc("chunkbridge_catalog_backup_groups", "PMXBCKUP backup groups (type and id).", nil, nil),
	at:          prometheus.NewDesc("chunkbridge_store_counted_timestamp_seconds", "When the store figures were counted.", nil, nil),
	tenantLogical: prometheus.NewDesc("chunkbridge_tenant_logical_bytes", "Bytes a tenant's casync indexes and snapshot files describe.",
		[]string{"tenant", "dedup_domain"}, nil),
	tenantStored: prometheus.NewDesc("chunkbridge_tenant_stored_bytes", "Stored bytes of the chunks a tenant's uploads added to its domain.",
		[]string{"tenant", "dedup_domain"}, nil),
	tenantLogicalQuota: prometheus.NewDesc("chunkbridge_tenant_logical_bytes_quota", "A tenant's logical-bytes quota (only tenants with one).",
		[]string{"tenant"}, nil),
	tenantStoredQuota: prometheus.NewDesc("chunkbridge_tenant_stored_bytes_quota", "A tenant's stored-bytes quota (only tenants with one).",
		[]string{"tenant"}, nil),
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	d := storeDescs
	for _, desc := range []*prometheus.Desc{d.chunks, d.stored, d.logical, d.referenced, d.dedup, d.compression, d.indexes, d.snapshots, d.files, d.groups, d.at,
		d.tenantLogical, d.tenantStored, d.tenantLogicalQuota, d.tenantStoredQuota} {
		ch <- desc
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.s.stats.get()
	if !c.s.fresh(counts) {
		c.s.refreshSoon()
	}
	if counts == nil {
		return // nothing counted yet: the count just started
	}
	d := storeDescs
	gauge := func(desc *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v)
	}
	gauge(d.chunks, float64(counts.chunks))
	gauge(d.stored, float64(counts.stored))
	gauge(d.logical, float64(counts.logical))
	gauge(d.referenced, float64(counts.catalog.ContentBytes))
	gauge(d.dedup, counts.dedupRatio())
	gauge(d.compression, counts.compressionRatio())
	gauge(d.indexes, float64(counts.catalog.CasyncIndexes))
	gauge(d.snapshots, float64(counts.catalog.Snapshots))
	gauge(d.files, float64(counts.catalog.SnapshotFiles))
	gauge(d.groups, float64(counts.catalog.BackupGroups))
	gauge(d.at, float64(counts.at.Unix()))
	for _, u := range c.s.tenantUsage(counts) {
		ch <- prometheus.MustNewConstMetric(d.tenantLogical, prometheus.GaugeValue, float64(u.LogicalBytes), u.Tenant, u.DedupDomain)
		ch <- prometheus.MustNewConstMetric(d.tenantStored, prometheus.GaugeValue, float64(u.StoredBytes), u.Tenant, u.DedupDomain)
		if u.LogicalBytesQuota > 0 {
			ch <- prometheus.MustNewConstMetric(d.tenantLogicalQuota, prometheus.GaugeValue, float64(u.LogicalBytesQuota), u.Tenant)
		}
		if u.StoredBytesQuota > 0 {
			ch <- prometheus.MustNewConstMetric(d.tenantStoredQuota, prometheus.GaugeValue, float64(u.StoredBytesQuota), u.Tenant)
		}
	}
}
