// Package admin is the AdminService: statistics now; garbage collection and
// verification join it later.
package admin

import (
	"context"
	"strings"
	"sync"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Server implements chunkbridgev1.AdminServiceServer.
type Server struct {
	chunkbridgev1.UnimplementedAdminServiceServer
	store  storage.Store
	chunks *chunk.Service
	ttl    time.Duration

	mu      sync.Mutex // one count at a time; callers wait for it
	counted time.Time
	count   int64
	bytes   int64
}

// New returns the AdminService. Store counts are cached for ttl because
// counting lists every chunk.
func New(store storage.Store, chunks *chunk.Service, ttl time.Duration) *Server {
	return &Server{store: store, chunks: chunks, ttl: ttl}
}

// GetStats counts the stored chunks (cached for the ttl) and reports this
// process's upload counters.
func (s *Server) GetStats(ctx context.Context, _ *chunkbridgev1.GetStatsRequest) (*chunkbridgev1.GetStatsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counted.IsZero() || time.Since(s.counted) > s.ttl {
		var n, b int64
		err := s.store.List(ctx, "chunks/", func(i storage.Info) error {
			if strings.HasSuffix(i.Key, ".cacnk") {
				n++
				b += i.Size
			}
			return nil
		})
		if err != nil {
			return nil, apierr.Status(err)
		}
		s.count, s.bytes, s.counted = n, b, time.Now()
	}
	c := s.chunks.Counters()
	return &chunkbridgev1.GetStatsResponse{
		ChunkCount:         s.count,
		StoredBytes:        s.bytes,
		ChunksWritten:      c.Written,
		ChunksDeduplicated: c.Deduplicated,
		BytesReceived:      c.BytesReceived,
		CountedAt:          s.counted.Unix(),
	}, nil
}
