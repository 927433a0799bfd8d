// Package admin is the AdminService: statistics, garbage collection,
// verification and retention (prune) over the store the chunk service and
// the catalog share. Each concern has its own file.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Config assembles the AdminService. Store, Chunks and Catalog are
// required; zero values of the rest take the defaults.
type Config struct {
	Store   storage.Store
	Chunks  *chunk.Service
	Catalog *catalog.Server
	Log     *slog.Logger
	// Registerer receives the admin metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// StatsTTL is how long store counts are reused (default 10s).
	StatsTTL time.Duration
	// Ready reports whether storage answered the last health probe; while
	// it does not, GetStats serves the last count marked stale instead of
	// failing or waiting for a count that cannot finish. Nil: not asked.
	Ready func() bool
	// DefaultGrace is the GC grace period when a request gives none
	// (default 24h).
	DefaultGrace time.Duration
	// Workers list chunk prefixes in parallel in GC and statistics
	// (default 16).
	Workers int
	// ListPrefixes is 16 (default) or 256: how finely the chunk id space is
	// divided for listing (see prefixes).
	ListPrefixes int
	// MarkWorkers read indexes in parallel (default 8).
	MarkWorkers int
	// VerifyWorkers read chunks back in parallel (default 4).
	VerifyWorkers int
	// RetryBackoff is the first wait before verification reads a chunk
	// again that storage could not serve; the second is four times as long
	// (default 250ms).
	RetryBackoff time.Duration
	// DeleteBatch is how many chunks one GC delete batch removes (default
	// 1000, the S3 DeleteObjects maximum).
	DeleteBatch int
	// Hooks let tests act at fixed points of a GC run.
	Hooks Hooks
	// Tenants lists the tenants of the credentials file, with their
	// quotas, for the statistics; nil without one.
	Tenants func() []auth.Tenant
	// Quota, when set, counts each tenant's stored bytes with this
	// service's count of the store.
	Quota *quota.Book
}

// Hooks are called, when set, at fixed points of a GC run.
type Hooks struct {
	// AfterMark runs once every published file has been read, before the
	// sweep lists any chunk.
	AfterMark func()
	// InDeleteBatch runs inside each delete batch, with commits held off,
	// before the batch's chunks are deleted.
	InDeleteBatch func(ids []chunk.ID)
}

// Server implements chunkbridgev1.AdminServiceServer.
type Server struct {
	chunkbridgev1.UnimplementedAdminServiceServer
	store    storage.Store
	chunks   *chunk.Service
	catalog  *catalog.Server
	log      *slog.Logger
	cfg      Config
	metrics  *metrics
	prefixes prefixes

	stats statsCache

	gcMu     sync.Mutex // guards gcStatus and lastGC
	gcStatus *gcProgress
	lastGC   *chunkbridgev1.GCReport
}

// New returns the AdminService.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Chunks == nil || cfg.Catalog == nil {
		return nil, errors.New("admin service: store, chunk service and catalog are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.StatsTTL <= 0 {
		cfg.StatsTTL = 10 * time.Second
	}
	if cfg.DefaultGrace <= 0 {
		cfg.DefaultGrace = 24 * time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.ListPrefixes != 256 {
		cfg.ListPrefixes = 16
	}
	if cfg.MarkWorkers <= 0 {
		cfg.MarkWorkers = 8
	}
	if cfg.VerifyWorkers <= 0 {
		cfg.VerifyWorkers = 4
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 250 * time.Millisecond
	}
	if cfg.DeleteBatch <= 0 {
		cfg.DeleteBatch = 1000
	}
	s := &Server{store: cfg.Store, chunks: cfg.Chunks, catalog: cfg.Catalog, log: cfg.Log, cfg: cfg, prefixes: newPrefixes(cfg.ListPrefixes)}
	s.metrics = newMetrics(cfg.Registerer, s)
	if cfg.Quota != nil {
		cfg.Quota.SetStoredCounter(func(ctx context.Context) (map[string]int64, error) {
			// A count that starts now, never a cached one: the book
			// forgets what it added before calling, so a count from
			// before those additions (the statistics' TTL, or the last
			// count while storage is unreachable) would lose them and
			// let a tenant over its quota store again. The count is
			// shared with the statistics.
			s.stats.counting.Lock()
			defer s.stats.counting.Unlock()
			c, err := s.count(ctx)
			if err != nil {
				return nil, err
			}
			s.stats.set(c)
			return c.tenantStored, nil
		})
	}
	return s, nil
}

// domains returns the chunk spaces, plain and encrypted, of every dedup
// domain a tenant is bound to (bindings, from chunk.Bindings), in domain
// name order.
func (s *Server) domains(bindings map[string]string) []space {
	names := domainNames(bindings)
	out := make([]space, 0, 2*len(names))
	for _, d := range names {
		out = append(out, space{d, false, s.chunks.DomainStore(d)}, space{d, true, s.chunks.EncryptedStore(d)})
	}
	return out
}

// space is one chunk space: a domain's plain or its encrypted one (see
// chunk.EncryptedPrefix), laid out alike so that one walk serves both.
type space struct {
	domain    string
	encrypted bool
	st        storage.Store
}

// ctx is ctx for chunk service calls on the space.
func (sp space) ctx(ctx context.Context) context.Context {
	ctx = chunk.InDomain(ctx, sp.domain)
	if sp.encrypted {
		ctx = chunk.Encrypted(ctx)
	}
	return ctx
}

// domainNames is the distinct dedup domains of bindings, sorted (the
// default domain is always among them: chunk.Bindings adds it).
func domainNames(b map[string]string) []string {
	seen := map[string]bool{}
	var names []string
	for _, d := range b {
		if !seen[d] {
			seen[d] = true
			names = append(names, d)
		}
	}
	slices.Sort(names)
	return names
}

// prefixes divides the chunk id space into listing prefixes that GC,
// verification and statistics work through in parallel: 16 (chunks/0 …
// chunks/f) or 256 (chunks/00 … chunks/ff). Listing a prefix of chunks/
// costs one pass over the chunks/ directory on a directory store and a
// share of the pages on S3, so 16 prefixes list a directory store 7× faster
// than 256 and S3 as fast, as long as Workers ≤ 16.
type prefixes struct {
	keys []string
	hex  int // hex digits per prefix: 1 or 2
}

func newPrefixes(n int) prefixes {
	p := prefixes{hex: 1}
	if n == 256 {
		p.hex = 2
	}
	for i := range 1 << (4 * p.hex) {
		p.keys = append(p.keys, "chunks/"+fmt.Sprintf("%0*x", p.hex, i))
	}
	return p
}

// of is the prefix that holds id.
func (p prefixes) of(id chunk.ID) int {
	if p.hex == 1 {
		return int(id[0] >> 4)
	}
	return int(id[0])
}

// last is the highest id prefix i can hold.
func (p prefixes) last(i int) chunk.ID {
	var id chunk.ID
	for j := range id {
		id[j] = 0xff
	}
	if p.hex == 1 {
		id[0] = byte(i<<4) | 0x0f
	} else {
		id[0] = byte(i)
	}
	return id
}

// chunkID reads the id of a chunk key chunks/<4 hex>/<64 hex>.cacnk;
// ok is false for any other key, which is never touched.
func chunkID(key string) (chunk.ID, bool) {
	rest, ok := strings.CutPrefix(key, "chunks/")
	if !ok || len(rest) != 4+1+64+len(".cacnk") || rest[4] != '/' || !strings.HasSuffix(rest, ".cacnk") {
		return chunk.ID{}, false
	}
	hex := rest[5 : 5+64]
	if hex[:4] != rest[:4] {
		return chunk.ID{}, false
	}
	id, err := chunk.ParseID(hex)
	if err != nil || id.String() != hex { // lowercase only, as the service writes
		return chunk.ID{}, false
	}
	return id, true
}
