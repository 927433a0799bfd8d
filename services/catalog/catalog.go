// Package catalog is the CatalogService: casync indexes and PMXBCKUP
// snapshot files, the things that refer to chunks. It publishes nothing
// until it is complete and every chunk it references is stored.
package catalog

import (
	"fmt"
	"os"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Config tunes the catalog. Zero values take the defaults.
type Config struct {
	// MaxIndexSize bounds one casync index (default format.MaxIndex).
	MaxIndexSize int64
	// SpoolDir holds indexes while they arrive and are validated (default
	// the system temporary directory). Nothing there outlives a call.
	SpoolDir string
	// Guard is where commits register the chunks they reference with
	// garbage collection, wherever it runs (default: a new one on store
	// that empties chunks' presence cache, which the AdminService finds
	// through Server.Guard).
	Guard *gcguard.Guard
}

// Server implements chunkbridgev1.CatalogServiceServer.
type Server struct {
	chunkbridgev1.UnimplementedCatalogServiceServer
	store  storage.Store
	chunks *chunk.Service
	cfg    Config
	guard  *gcguard.Guard
}

// New returns the catalog over store; chunks answers existence checks.
func New(store storage.Store, chunks *chunk.Service, cfg Config) (*Server, error) {
	if cfg.MaxIndexSize <= 0 {
		cfg.MaxIndexSize = format.MaxIndex
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("catalog spool directory %s: %w", cfg.SpoolDir, err)
	}
	if cfg.Guard == nil {
		cfg.Guard = gcguard.New(store, gcguard.Config{OnChange: chunks.ForgetAll})
	}
	return &Server{store: store, chunks: chunks, cfg: cfg, guard: cfg.Guard}, nil
}

// Guard is the guard the catalog's commits register with; garbage
// collection in this process must use the same one.
func (s *Server) Guard() *gcguard.Guard { return s.guard }
