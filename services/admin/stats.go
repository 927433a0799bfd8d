package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/storage"
)

// storeCounts is one count of the store.
type storeCounts struct {
	at                              time.Time
	chunks, stored, logical, noSize int64
	catalog                         catalog.Summary
	stale                           bool // chunks were deleted since
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

// count lists the chunk prefixes in parallel. The uncompressed size comes
// from each chunk's metadata: in the listing where the store returns it
// (MinIO), else from a Stat, and for a chunk without the metadata (placed
// by casync itself) from reading it.
func (s *Server) count(ctx context.Context) (*storeCounts, error) {
	var chunks, stored, logical, noSize atomic.Int64
	list := s.store.List
	if ml, ok := s.store.(storage.MetadataLister); ok {
		list = ml.ListWithMetadata
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Workers)
	for _, prefix := range s.prefixes.keys {
		g.Go(func() error {
			var need []storage.Info
			err := list(gctx, prefix, func(i storage.Info) error {
				if _, ok := chunkID(i.Key); !ok {
					return nil
				}
				chunks.Add(1)
				stored.Add(i.Size)
				if size, err := strconv.ParseInt(i.Metadata["size"], 10, 64); err == nil && i.Metadata != nil {
					logical.Add(size)
				} else {
					need = append(need, i)
				}
				return nil
			})
			if err != nil {
				return err
			}
			sg, sctx := errgroup.WithContext(gctx)
			sg.SetLimit(8)
			for _, i := range need {
				id, _ := chunkID(i.Key)
				sg.Go(func() error {
					st, err := s.store.Stat(sctx, id.Key())
					if err == nil {
						if size, perr := strconv.ParseInt(st.Metadata["size"], 10, 64); perr == nil {
							logical.Add(size)
							return nil
						}
						// No recorded size: the chunk service reads it.
						var info *chunkbridgev1.ChunkInfo
						if info, err = s.chunks.Stat(sctx, id); err == nil {
							logical.Add(info.GetSize())
							noSize.Add(1)
							return nil
						}
					}
					if errors.Is(err, storage.ErrNotFound) || errors.Is(err, apierr.ErrNotFound) { // deleted meanwhile
						chunks.Add(-1)
						stored.Add(-i.Size)
						return nil
					}
					return err
				})
			}
			return sg.Wait()
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("count chunks: %w", err)
	}
	sum, err := s.catalog.Summary(ctx)
	if err != nil {
		return nil, err
	}
	return &storeCounts{at: time.Now(), chunks: chunks.Load(), stored: stored.Load(), logical: logical.Load(), noSize: noSize.Load(), catalog: sum}, nil
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
		ChunkCount:         c.chunks,
		StoredBytes:        c.stored,
		ChunksWritten:      up.Written,
		ChunksDeduplicated: up.Deduplicated,
		BytesReceived:      up.BytesReceived,
		CountedAt:          c.at.Unix(),
		LogicalBytes:       c.logical,
		ReferencedBytes:    c.catalog.ContentBytes,
		DedupRatio:         c.dedupRatio(),
		CompressionRatio:   c.compressionRatio(),
		CasyncIndexes:      c.catalog.CasyncIndexes,
		Snapshots:          c.catalog.Snapshots,
		SnapshotFiles:      c.catalog.SnapshotFiles,
		BackupGroups:       c.catalog.BackupGroups,
		ChunksWithoutSize:  c.noSize,
		StaleReason:        staleReason,
	}, nil
}
