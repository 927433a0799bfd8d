package admin

import (
	"context"
	"errors"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// mark streams every published casync index and snapshot file (those only
// selects, when set) into refs, the chunks of encrypted files into encRefs
// when it is set, MarkWorkers files at a time, and returns how many files it read. A file
// deleted since it was listed is skipped. onErr decides about a file that
// could not be read: nil goes on (verification reports it), an error stops
// the mark (garbage collection must not guess). done is called after each
// file, if set.
func (s *Server) mark(ctx context.Context, refs, encRefs *refSet, only func(catalog.Referrer) bool, onErr func(catalog.Referrer, error) error, done func()) (int64, error) {
	if encRefs == nil {
		encRefs = refs
	}
	var files atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.MarkWorkers)
	err := s.catalog.ListReferrers(gctx, func(r catalog.Referrer) error {
		if only != nil && !only(r) {
			return nil
		}
		g.Go(func() error {
			err := s.catalog.ScanReferrerSpace(gctx, r, func(id chunk.ID, encrypted bool) error {
				if encrypted {
					encRefs.add(id)
				} else {
					refs.add(id)
				}
				return nil
			})
			switch {
			case err == nil:
				files.Add(1)
			case errors.Is(err, apierr.ErrNotFound):
				// deleted since it was listed: it references nothing now
			case gctx.Err() != nil:
				return gctx.Err()
			default:
				files.Add(1)
				if err := onErr(r, err); err != nil {
					return err
				}
			}
			if done != nil {
				done()
			}
			return nil
		})
		return gctx.Err()
	})
	if werr := g.Wait(); werr != nil {
		err = werr
	}
	if err == nil {
		err = ctx.Err()
	}
	return files.Load(), err
}
