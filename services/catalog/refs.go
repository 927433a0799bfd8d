package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// What the AdminService (garbage collection, verification, statistics)
// needs from the catalog: every published file that references chunks, and
// the chunks each one references.

// Referrer is a published file that references chunks.
type Referrer struct {
	// Name is the file's key in the store: [tenants/<tenant>/]indexes/<name>
	// for a casync index, [tenants/<tenant>/]snapshots/[ns/<a>/…]<type>/<id>/<time>/<file>
	// for a snapshot file.
	Name string
	// Snapshot is true for a PMXBCKUP snapshot file.
	Snapshot bool
	// Tenant owns the file; its chunks are in the tenant's dedup domain.
	Tenant string
}

// Local is the file's name as its tenant sees it (Name without the
// tenant's prefix).
func (r Referrer) Local() string { return strings.TrimPrefix(r.Name, TenantPrefix(r.Tenant)) }

// ListReferrers calls fn for every published casync index and snapshot
// file of every tenant: the default tenant's indexes, then its snapshot
// files, then each other tenant's the same way, each in key order.
// Tenants are found in the store, not in the credentials file, so the
// files of a tenant no principal names any more are listed too. Files
// committed after the listing passed their place are not seen; garbage
// collection learns of them through the guard.
func (s *Server) ListReferrers(ctx context.Context, fn func(Referrer) error) error {
	return s.listReferrers(ctx, s.store.List, func(r Referrer, _ storage.Metadata) error { return fn(r) })
}

// listReferrers is ListReferrers with the listing function given
// (List, or a MetadataLister's).
func (s *Server) listReferrers(ctx context.Context, list func(context.Context, string, func(storage.Info) error) error, fn func(Referrer, storage.Metadata) error) error {
	visit := func(i storage.Info, r Referrer) error {
		rest := strings.TrimPrefix(i.Key, TenantPrefix(r.Tenant))
		switch {
		case strings.HasPrefix(rest, indexPrefix):
		case strings.HasPrefix(rest, snapshotPrefix):
			if _, err := parseSnapshotPath(strings.TrimPrefix(rest, snapshotPrefix), false); err != nil {
				if strings.HasSuffix(rest, ".fidx") || strings.HasSuffix(rest, ".didx") {
					// Perhaps a snapshot file of a layout newer than this
					// build's: skipping it would let garbage collection
					// sweep its chunks.
					return fmt.Errorf("%w: %s looks like a snapshot file but this version cannot parse its path (%v): upgrade chunkbridge, or remove the file if it is not one, before running garbage collection",
						apierr.ErrFailedPrecondition, i.Key, err)
				}
				return nil // not a snapshot file: no client can reach it
			}
			r.Snapshot = true
		default:
			return nil // nothing a client can reach
		}
		r.Name = i.Key
		return fn(r, i.Metadata)
	}
	def := Referrer{Tenant: auth.DefaultTenant}
	if err := list(ctx, indexPrefix, func(i storage.Info) error { return visit(i, def) }); err != nil {
		return fmt.Errorf("list indexes: %w", err)
	}
	if err := list(ctx, snapshotPrefix, func(i storage.Info) error { return visit(i, def) }); err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	err := list(ctx, tenantsPrefix, func(i storage.Info) error {
		tenant, _, ok := strings.Cut(strings.TrimPrefix(i.Key, tenantsPrefix), "/")
		if !ok || tenant == auth.DefaultTenant {
			return nil // the default tenant's live at the root
		}
		return visit(i, Referrer{Tenant: tenant})
	})
	if err != nil {
		return fmt.Errorf("list tenants' indexes and snapshots: %w", err)
	}
	return nil
}

// errReader remembers the first read error, so that an outage while
// streaming a file is reported as such and not as a malformed file.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// ScanReferrer streams the chunk ids r references, in file order with
// repeats, holding one buffer of the file at a time. A file deleted
// meanwhile is apierr.ErrNotFound; a file that does not parse is
// apierr.ErrInvalid; a storage failure keeps its storage error (e.g.
// storage.ErrUnavailable). Errors from each are returned unchanged.
func (s *Server) ScanReferrer(ctx context.Context, r Referrer, each func(chunk.ID) error) error {
	return s.ScanReferrerSpace(ctx, r, func(id chunk.ID, _ bool) error { return each(id) })
}

// ScanReferrerSpace is ScanReferrer telling each whether the file's
// chunks are in the encrypted space (a snapshot file of an encrypted PBS
// archive) or the plain one.
func (s *Server) ScanReferrerSpace(ctx context.Context, r Referrer, each func(id chunk.ID, encrypted bool) error) error {
	rc, info, err := s.store.Get(ctx, r.Name)
	if err != nil {
		return notFound("file", r.Name, err)
	}
	defer rc.Close()
	encrypted := info.Metadata[metaEncrypted] == "true"
	er := &errReader{r: rc}
	var eachErr error
	call := func(id chunk.ID) error {
		if err := each(id, encrypted); err != nil {
			eachErr = err
			return err
		}
		return nil
	}
	if r.Snapshot {
		_, err = pbsindex.Scan(er, maxEntries, func(d pbsindex.Digest) error { return call(chunk.ID(d)) })
	} else {
		_, err = scanIndex(er, info.Size, call)
	}
	switch {
	case err == nil:
		return nil
	case eachErr != nil && errors.Is(err, eachErr):
		return eachErr
	case er.err != nil:
		return fmt.Errorf("%s: %w", r.Name, er.err)
	case r.Snapshot:
		return fmt.Errorf("%w: %s: %v", apierr.ErrInvalid, r.Name, err)
	}
	return fmt.Errorf("%s: %w", r.Name, err)
}

// Summary counts what the catalog holds.
type Summary struct {
	CasyncIndexes int64
	SnapshotFiles int64
	Snapshots     int64 // distinct [<namespace>/]<type>/<id>/<time>
	BackupGroups  int64 // distinct [<namespace>/]<type>/<id>
	// ContentBytes is the sum of the sizes of the blobs, archives and
	// backed-up files the indexes describe: the logical bytes referenced.
	ContentBytes int64
}

// Summary reads every index's recorded content size: from the listing
// where the store returns metadata, else with parallel Stat calls. It
// returns the whole store's counts and each tenant's.
func (s *Server) Summary(ctx context.Context) (Summary, map[string]Summary, error) {
	type counts struct {
		Summary
		snaps, groups map[string]struct{}
	}
	var (
		mu      sync.Mutex
		tenants = map[string]*counts{}
		g, gctx = errgroup.WithContext(ctx)
	)
	g.SetLimit(32)
	add := func(r Referrer, meta storage.Metadata) {
		size, _ := strconv.ParseInt(meta[metaContentSize], 10, 64)
		mu.Lock()
		defer mu.Unlock()
		c := tenants[r.Tenant]
		if c == nil {
			c = &counts{snaps: map[string]struct{}{}, groups: map[string]struct{}{}}
			tenants[r.Tenant] = c
		}
		c.ContentBytes += size
		if !r.Snapshot {
			c.CasyncIndexes++
			return
		}
		c.SnapshotFiles++
		p, _ := parseSnapshotPath(strings.TrimPrefix(r.Local(), snapshotPrefix), false)
		c.snaps[p.dir()] = struct{}{}
		c.groups[p.group()] = struct{}{}
	}
	visit := func(r Referrer, meta storage.Metadata) error {
		if meta != nil {
			add(r, meta)
			return nil
		}
		g.Go(func() error {
			st, err := s.store.Stat(gctx, r.Name)
			if errors.Is(err, storage.ErrNotFound) {
				return nil // deleted meanwhile
			}
			if err != nil {
				return fmt.Errorf("catalog summary: %w", err)
			}
			add(r, st.Metadata)
			return nil
		})
		return nil
	}
	list := s.store.List
	if ml, ok := s.store.(storage.MetadataLister); ok {
		list = ml.ListWithMetadata
	}
	err := s.listReferrers(ctx, list, visit)
	if werr := g.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return Summary{}, nil, err
	}
	var total Summary
	per := make(map[string]Summary, len(tenants))
	for t, c := range tenants {
		c.Snapshots, c.BackupGroups = int64(len(c.snaps)), int64(len(c.groups))
		per[t] = c.Summary
		total.CasyncIndexes += c.CasyncIndexes
		total.SnapshotFiles += c.SnapshotFiles
		total.ContentBytes += c.ContentBytes
		total.Snapshots += c.Snapshots
		total.BackupGroups += c.BackupGroups
	}
	return total, per, nil
}

// recheck confirms from storage, bypassing the presence cache, that every
// id still exists. A commit calls it when garbage collection deleted
// chunks after the commit had checked its own: it fails with
// apierr.ErrMissingChunks if a deletion won the race.
func (s *Server) recheck(ctx context.Context, chunks storage.Store, ids gcguard.IDs) error {
	var (
		mu      sync.Mutex
		missing []chunk.ID
		n       int
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for id := range ids {
		g.Go(func() error {
			_, err := chunks.Stat(gctx, id.Key())
			if errors.Is(err, storage.ErrNotFound) {
				s.chunks.Forget(id)
				mu.Lock()
				n++
				if len(missing) < 5 {
					missing = append(missing, id)
				}
				mu.Unlock()
				return nil
			}
			if err != nil {
				return fmt.Errorf("re-check chunk %s: %w", id, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	names := make([]string, len(missing))
	for i, id := range missing {
		names[i] = id.String()
	}
	return fmt.Errorf("%w: garbage collection deleted %d of its chunks while it was being committed (first: %s); nothing was published: upload them again and retry",
		apierr.ErrMissingChunks, n, strings.Join(names, ", "))
}
