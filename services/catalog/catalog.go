// Package catalog is the CatalogService: casync indexes and PMXBCKUP
// snapshot files, the things that refer to chunks. It publishes nothing
// until it is complete and every chunk it references is stored.
package catalog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/internal/budget"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Config tunes the catalog. Zero values take the defaults.
type Config struct {
	// MaxIndexSize bounds one casync index (default format.MaxIndex).
	MaxIndexSize int64
	// SpoolDir holds indexes while they arrive and are validated (default
	// the system temporary directory). Nothing there outlives a call.
	SpoolDir string
	// MaxBlobSpools bounds the blob files (PutSnapshotBlob) spooled at
	// once, each up to 128 MiB of SpoolDir (default 16); more wait their
	// turn.
	MaxBlobSpools int
	// MaxIndexSpools bounds the casync indexes (PutIndex) spooled and
	// checked at once, each up to MaxIndexSize of SpoolDir (default 8);
	// more wait their turn.
	MaxIndexSpools int
	// Guard is where commits register the chunks they reference with
	// garbage collection, wherever it runs (default: a new one on store
	// that empties chunks' presence cache, which the AdminService finds
	// through Server.Guard).
	Guard *gcguard.Guard
	// Quota refuses a commit that would take its tenant over a quota;
	// nil for no quotas.
	Quota *quota.Book
}

// Server implements chunkbridgev1.CatalogServiceServer.
type Server struct {
	chunkbridgev1.UnimplementedCatalogServiceServer
	store  storage.Store
	chunks *chunk.Service
	cfg    Config
	guard  *gcguard.Guard
	// blobSpools counts the blob files being spooled (Config.MaxBlobSpools).
	blobSpools *budget.Budget
	// indexSpools counts the indexes being spooled (Config.MaxIndexSpools).
	indexSpools *budget.Budget
}

// New returns the catalog over store; chunks answers existence checks.
func New(store storage.Store, chunks *chunk.Service, cfg Config) (*Server, error) {
	if cfg.MaxIndexSize <= 0 {
		cfg.MaxIndexSize = format.MaxIndex
	}
	if cfg.MaxBlobSpools <= 0 {
		cfg.MaxBlobSpools = defaultBlobSpools
	}
	if cfg.MaxIndexSpools <= 0 {
		cfg.MaxIndexSpools = defaultIndexSpools
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
	s := &Server{store: store, chunks: chunks, cfg: cfg, guard: cfg.Guard, blobSpools: budget.New(int64(cfg.MaxBlobSpools)),
		indexSpools: budget.New(int64(cfg.MaxIndexSpools))}
	chunks.SetReferences(s.tenantReferences)
	return s, nil
}

// referenced tells the chunk service that the tenant of ctx now
// references ids, so that it serves them at once.
func (s *Server) referenced(ctx context.Context, ids gcguard.IDs) {
	list := make([]chunk.ID, 0, min(len(ids), 1<<16))
	for id := range ids {
		if len(list) == cap(list) {
			break // the chunk service's next rebuild finds the rest
		}
		list = append(list, id)
	}
	s.chunks.Referenced(auth.FromContext(ctx).Tenant, list...)
}

// tenantReferences streams the chunk ids the files of tenant reference,
// for the chunk service's serving rule.
func (s *Server) tenantReferences(ctx context.Context, tenant string, each func(chunk.ID) error) error {
	var refs []Referrer
	prefix := TenantPrefix(tenant)
	list := func(p string, snapshot bool) error {
		return s.store.List(ctx, prefix+p, func(i storage.Info) error {
			if snapshot {
				if _, err := parseSnapshotPath(strings.TrimPrefix(i.Key, prefix+snapshotPrefix), false); err != nil {
					return nil
				}
			}
			refs = append(refs, Referrer{Name: i.Key, Snapshot: snapshot, Tenant: tenant})
			return nil
		})
	}
	if err := list(indexPrefix, false); err != nil {
		return err
	}
	if err := list(snapshotPrefix, true); err != nil {
		return err
	}
	for _, r := range refs {
		if err := s.ScanReferrer(ctx, r, each); err != nil && !errors.Is(err, apierr.ErrNotFound) {
			return err
		}
	}
	return nil
}

// admit checks a commit of a file describing n bytes against its tenant's
// quotas and reserves the bytes; done releases them, counting them when
// the file was published.
func (s *Server) admit(ctx context.Context, n int64) (done func(published bool), err error) {
	tenant := auth.FromContext(ctx).Tenant
	if err := s.cfg.Quota.CheckStored(ctx, tenant); err != nil {
		return nil, err
	}
	return s.cfg.Quota.ReserveLogical(ctx, tenant, n, s.contentBytes)
}

// contentBytes is the sum of the content sizes of the files of ctx's
// tenant: its logical bytes.
func (s *Server) contentBytes(ctx context.Context) (int64, error) {
	var (
		mu  sync.Mutex
		sum int64
	)
	view := s.view(ctx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	add := func(meta storage.Metadata) {
		n, _ := strconv.ParseInt(meta[metaContentSize], 10, 64)
		mu.Lock()
		sum += n
		mu.Unlock()
	}
	list := metadataList(view)
	visit := func(i storage.Info) error {
		if i.Metadata != nil {
			add(i.Metadata)
			return nil
		}
		g.Go(func() error {
			st, err := view.Stat(gctx, i.Key)
			if errors.Is(err, storage.ErrNotFound) {
				return nil // deleted meanwhile
			}
			if err != nil {
				return err
			}
			add(st.Metadata)
			return nil
		})
		return nil
	}
	err := list(ctx, indexPrefix, visit)
	if err == nil {
		err = list(ctx, snapshotPrefix, func(i storage.Info) error {
			if _, perr := parseSnapshotPath(strings.TrimPrefix(i.Key, snapshotPrefix), false); perr != nil {
				return nil
			}
			return visit(i)
		})
	}
	if werr := g.Wait(); err == nil {
		err = werr
	}
	return sum, err
}

// metadataList is st's listing with each object's metadata where the
// store can give it at no extra request (storage.MetadataLister); where
// Info.Metadata is nil, the caller stats the object.
func metadataList(st storage.Store) func(context.Context, string, func(storage.Info) error) error {
	if ml, ok := st.(storage.MetadataLister); ok {
		return ml.ListWithMetadata
	}
	return st.List
}

// Guard is the guard the catalog's commits register with; garbage
// collection in this process must use the same one.
func (s *Server) Guard() *gcguard.Guard { return s.guard }
