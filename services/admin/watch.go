package admin

import (
	"context"
	"time"
)

// WatchGC keeps this process's presence cache honest when garbage
// collection runs in another process sharing the store (another
// chunk-service replica): every interval it reads the garbage collection
// state (gc/state), and the chunk service's presence cache is emptied
// whenever a delete batch starts or ends anywhere (see gcguard). Commits
// do not depend on it: each reads the state itself before publishing. It
// returns when ctx ends.
func (s *Server) WatchGC(ctx context.Context, interval time.Duration) {
	s.catalog.Guard().Watch(ctx, interval)
}
