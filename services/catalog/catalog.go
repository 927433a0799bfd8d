// Package catalog is the CatalogService: casync indexes and PMXBCKUP
// snapshot files, the things that refer to chunks. It publishes nothing
// until it is complete and every chunk it references is stored.
package catalog

import (
	"fmt"
	"os"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Config tunes the catalog. Zero values take the defaults.
type Config struct {
	// MaxIndexSize bounds one casync index (default 1 GiB: a 200 GB blob
	// at 64 KiB chunks has an index of about 130 MB).
	MaxIndexSize int64
	// SpoolDir holds indexes while they arrive and are validated (default
	// the system temporary directory). Nothing there outlives a call.
	SpoolDir string
}

// Server implements chunkbridgev1.CatalogServiceServer.
type Server struct {
	chunkbridgev1.UnimplementedCatalogServiceServer
	store  storage.Store
	chunks *chunk.Service
	cfg    Config
}

// New returns the catalog over store; chunks answers existence checks.
func New(store storage.Store, chunks *chunk.Service, cfg Config) (*Server, error) {
	if cfg.MaxIndexSize <= 0 {
		cfg.MaxIndexSize = 1 << 30
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return nil, fmt.Errorf("catalog spool directory %s: %w", cfg.SpoolDir, err)
	}
	return &Server{store: store, chunks: chunks, cfg: cfg}, nil
}
