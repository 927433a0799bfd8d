package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// storeCounts is one count of the store.
type storeCounts struct {
	at                              time.Time
	chunks, stored, logical, noSize int64
	encChunks, encStored            int64
	catalog                         catalog.Summary
	stale                           bool // chunks were deleted since
	// Per tenant: its files, the stored bytes its uploads added, and
	// its domain (from the bindings).
	tenantFiles  map[string]catalog.Summary
	tenantStored map[string]int64
	tenantDomain map[string]string
}

func (c *storeCounts) dedupRatio() float64 {
	if c.logical == 0 {
		return 0
	}
	return float64(c.catalog.ContentBytes) / float64(c.logical)
}

func (c *storeCounts) compressionRatio() float64 {
	if c.stored == 0 {
		return 0
	}
	return float64(c.logical) / float64(c.stored)
}

// statsCache keeps the last count for the TTL. Counting lists every chunk,
// so one count runs at a time and callers wait for it.
type statsCache struct {
	counting sync.Mutex
	mu       sync.Mutex // guards last
	last     *storeCounts
}

func (c *statsCache) get() *storeCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func (c *statsCache) set(v *storeCounts) {
	c.mu.Lock()
	c.last = v
	c.mu.Unlock()
}

// invalidate makes the next request count again (after a GC deleted);
// the metrics go on showing the old figures until then.
func (c *statsCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last != nil {
		stale := *c.last
		stale.stale = true
		c.last = &stale
	}
}

func (s *Server) fresh(c *storeCounts) bool {
	return c != nil && !c.stale && time.Since(c.at) <= s.cfg.StatsTTL
}

// counts returns a count no older than the TTL, counting if needed. When
// storage is unreachable it returns the last count, if any, with the
// reason it is stale: figures from before an outage must not pass for
// current ones.
func (s *Server) counts(ctx context.Context) (*storeCounts, string, error) {
	last := s.stats.get()
	if last != nil && s.cfg.Ready != nil && !s.cfg.Ready() {
		return last, "storage is unreachable (the health probe fails); these are the figures of the last count", nil
	}
	if s.fresh(last) {
		return last, "", nil
	}
	s.stats.counting.Lock()
	defer s.stats.counting.Unlock()
	if c := s.stats.get(); s.fresh(c) { // counted while we waited
		return c, "", nil
	}
	c, err := s.count(ctx)
	if err != nil {
		if last = s.stats.get(); last != nil && errors.Is(err, storage.ErrUnavailable) {
			why := "counting again failed, storage unavailable (" + err.Error() + "); these are the figures of the last count"
			if last.stale {
				why += ", and garbage collection deleted chunks since"
			}
			return last, why, nil
		}
		return nil, "", err
	}
	s.stats.set(c)
	return c, "", nil
}

// refreshSoon counts in the background unless a count is running; the
// metrics collector calls it when its figures are stale.
func (s *Server) refreshSoon() {
	if !s.stats.counting.TryLock() {
		return
	}
	go func() {
		defer s.stats.counting.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		c, err := s.count(ctx)
		if err != nil {
			s.log.Warn("counting the store for metrics failed", "err", err)
			return
		}
		s.stats.set(c)
	}()
}

// count lists the chunk prefixes of every domain in parallel. The
// uncompressed size comes from each chunk's metadata: in the listing where
// the store returns it (MinIO), else from a Stat, and for a chunk without
// the metadata (placed by casync itself) from reading it. The same
// metadata names the tenant whose upload stored the chunk.
func (s *Server) count(ctx context.Context) (*storeCounts, error) {
	bindings, err := chunk.Bindings(ctx, s.store)
	if err != nil {
		return nil, fmt.Errorf("count chunks: %w", err)
	}
	domains := s.domains(bindings)
	// The encrypted spaces are counted apart, then added in.
	c, enc := &domainCount{tenants: map[string]int64{}}, &domainCount{tenants: map[string]int64{}}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Workers)
	for _, sp := range domains {
		dc := c
		if sp.encrypted {
			dc = enc
		}
		for _, prefix := range s.prefixes.keys {
			g.Go(func() error { return s.countPrefix(sp.ctx(gctx), sp.domain, sp.st, prefix, dc) })
		}
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("count chunks: %w", err)
	}
	c.chunks.Add(enc.chunks.Load())
	c.stored.Add(enc.stored.Load())
	c.logical.Add(enc.logical.Load())
	for t, n := range enc.tenants {
		c.tenants[t] += n
	}
	sum, per, err := s.catalog.Summary(ctx)
	if err != nil {
		return nil, err
	}
	return &storeCounts{at: time.Now(), chunks: c.chunks.Load(), stored: c.stored.Load(), logical: c.logical.Load(), noSize: c.noSize.Load(),
		encChunks: enc.chunks.Load(), encStored: enc.stored.Load(),
		catalog: sum, tenantFiles: per, tenantStored: c.tenants, tenantDomain: bindings}, nil
}

// domainCount accumulates one count.
type domainCount struct {
	chunks, stored, logical, noSize atomic.Int64
	mu                              sync.Mutex
	tenants                         map[string]int64 // stored bytes by uploader
}

func (c *domainCount) add(meta storage.Metadata, domain string, stored int64) {
	t := meta[chunk.MetaTenant]
	if t == "" && domain == auth.DefaultDomain {
		t = auth.DefaultTenant // stored before tenants existed
	}
	c.mu.Lock()
	c.tenants[t] += stored
	c.mu.Unlock()
}

// countPrefix counts one listing prefix of the domain's chunk space st.
func (s *Server) countPrefix(ctx context.Context, domain string, st storage.Store, prefix string, c *domainCount) error {
	list := st.List
	if ml, ok := st.(storage.MetadataLister); ok {
		list = ml.ListWithMetadata
	}
	var need []storage.Info
	err := list(ctx, prefix, func(i storage.Info) error {
		if _, ok := chunkID(i.Key); !ok {
			return nil
		}
		c.chunks.Add(1)
		c.stored.Add(i.Size)
		if size, err := strconv.ParseInt(i.Metadata["size"], 10, 64); err == nil && i.Metadata != nil {
			c.logical.Add(size)
			c.add(i.Metadata, domain, i.Size)
		} else {
			need = append(need, i)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sg, sctx := errgroup.WithContext(ctx)
	sg.SetLimit(8)
	for _, i := range need {
		id, _ := chunkID(i.Key)
		sg.Go(func() error {
			info, err := st.Stat(sctx, id.Key())
			if err == nil {
				c.add(info.Metadata, domain, i.Size)
				if size, perr := strconv.ParseInt(info.Metadata["size"], 10, 64); perr == nil {
					c.logical.Add(size)
					return nil
				}
				// No recorded size: the chunk service reads it.
				var ci *chunkbridgev1.ChunkInfo
				if ci, err = s.chunks.Stat(sctx, id); err == nil {
					c.logical.Add(ci.GetSize())
					c.noSize.Add(1)
					return nil
				}
			}
			if errors.Is(err, storage.ErrNotFound) || errors.Is(err, apierr.ErrNotFound) { // deleted meanwhile
				c.chunks.Add(-1)
				c.stored.Add(-i.Size)
				return nil
			}
			return err
		})
	}
	return sg.Wait()
}

// GetStats reports the store's counts (cached for the TTL) and this
// process's upload counters.
func (s *Server) GetStats(ctx context.Context, _ *chunkbridgev1.GetStatsRequest) (*chunkbridgev1.GetStatsResponse, error) {
	c, staleReason, err := s.counts(ctx)
	if err != nil {
		return nil, apierr.Status(err)
	}
	up := s.chunks.Counters()
	return &chunkbridgev1.GetStatsResponse{
		ChunkCount:           c.chunks,
		StoredBytes:          c.stored,
		EncryptedChunks:      c.encChunks,
		EncryptedStoredBytes: c.encStored,
		ChunksWritten:        up.Written,
		ChunksDeduplicated:   up.Deduplicated,
		BytesReceived:        up.BytesReceived,
		CountedAt:            c.at.Unix(),
		LogicalBytes:         c.logical,
		ReferencedBytes:      c.catalog.ContentBytes,
		DedupRatio:           c.dedupRatio(),
		CompressionRatio:     c.compressionRatio(),
		CasyncIndexes:        c.catalog.CasyncIndexes,
		Snapshots:            c.catalog.Snapshots,
		SnapshotFiles:        c.catalog.SnapshotFiles,
		BackupGroups:         c.catalog.BackupGroups,
		ChunksWithoutSize:    c.noSize,
		StaleReason:          staleReason,
		Tenants:              s.tenantUsage(c),
	}, nil
}

// tenantUsage lists every tenant that has files, stored chunks, a binding
// or an entry in the credentials file, by name.
func (s *Server) tenantUsage(c *storeCounts) []*chunkbridgev1.TenantUsage {
	byName := map[string]*chunkbridgev1.TenantUsage{}
	get := func(t string) *chunkbridgev1.TenantUsage {
		u := byName[t]
		if u == nil {
			u = &chunkbridgev1.TenantUsage{Tenant: t, DedupDomain: c.tenantDomain[t]}
			byName[t] = u
		}
		return u
	}
	for t, f := range c.tenantFiles {
		u := get(t)
		u.LogicalBytes, u.CasyncIndexes, u.SnapshotFiles = f.ContentBytes, f.CasyncIndexes, f.SnapshotFiles
	}
	for t, n := range c.tenantStored {
		if t != "" {
			get(t).StoredBytes = n
		}
	}
	for t := range c.tenantDomain {
		get(t)
	}
	if s.cfg.Tenants != nil {
		for _, t := range s.cfg.Tenants() {
			u := get(t.Name)
			if u.DedupDomain == "" {
				u.DedupDomain = t.DedupDomain
			}
			u.LogicalBytesQuota, u.StoredBytesQuota = t.LogicalQuota, t.StoredQuota
		}
	}
	out := make([]*chunkbridgev1.TenantUsage, 0, len(byName))
	for _, u := range byName {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *chunkbridgev1.TenantUsage) int { return strings.Compare(a.Tenant, b.Tenant) })
	return out
}
