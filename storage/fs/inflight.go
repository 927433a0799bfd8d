package fs

import (
	"context"
	"sync"
)

// inflight serialises the puts of one key within the store. A put links its
// name before the name is durable and takes the name back if it cannot be
// made durable; a second put of the key that found the name in that window
// would answer "already stored" for an object about to vanish (syncfs
// reports a writeback error once, so the second put's own sync can
// succeed). Waiting for the first put's outcome instead lets the second one
// see the name gone and write the object itself, or find it durable.
type inflight struct {
	mu   sync.Mutex
	keys map[string]chan struct{} // closed when the key's put ends
	// onWait, if set (by tests), runs when a put starts to wait for key.
	onWait func(key string)
}

// acquire waits until no other put of key is in flight and claims it; the
// caller must call the returned release.
func (f *inflight) acquire(ctx context.Context, key string) (release func(), err error) {
	f.mu.Lock()
	for {
		ch, busy := f.keys[key]
		if !busy {
			break
		}
		f.mu.Unlock()
		if f.onWait != nil {
			f.onWait(key)
		}
		select {
		case <-ch:
		case <-ctx.Done():
		}
		f.mu.Lock()
		if err := ctx.Err(); err != nil {
			f.mu.Unlock()
			return nil, err
		}
	}
	if f.keys == nil {
		f.keys = make(map[string]chan struct{})
	}
	ch := make(chan struct{})
	f.keys[key] = ch
	f.mu.Unlock()
	return func() {
		f.mu.Lock()
		delete(f.keys, key)
		f.mu.Unlock()
		close(ch)
	}, nil
}
