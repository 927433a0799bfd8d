package admin

import (
	"context"
	"errors"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
)

// WatchGC keeps this process's presence cache honest when garbage
// collection runs in another process sharing the store (another
// chunk-service replica): every interval it reads the marker each GC run
// writes when it starts and when it ends (admin/gc-clock), and empties the
// chunk service's presence cache whenever a run that deletes starts or
// ends. Without it, a replica would go on answering "stored" for chunks
// another replica's GC deleted, and skip their uploads. A run in this
// process forgets each chunk it deletes itself; this adds nothing there.
// It returns when ctx ends.
func (s *Server) WatchGC(ctx context.Context, interval time.Duration) {
	last := "" // no marker: no GC ever ran
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		info, err := s.store.Stat(ctx, clockKey)
		switch {
		case err == nil:
			// The first look empties the cache too (it holds little yet):
			// a run may have ended just before this process looked.
			cur := info.Metadata["run"] + "/" + info.Metadata["state"]
			if cur != last && info.Metadata["dry-run"] != "true" {
				s.chunks.ForgetAll()
				s.log.Info("garbage collection seen in the store: presence cache emptied", "run", info.Metadata["run"], "state", info.Metadata["state"])
			}
			last = cur
		case errors.Is(err, storage.ErrNotFound):
		case ctx.Err() == nil:
			s.log.Debug("garbage collection marker unreadable", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
