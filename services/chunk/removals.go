package chunk

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
)

// Cross-replica cache invalidation for chunks this process removes outside
// garbage collection (quarantine). Other chunk-service replicas on the same
// store may hold the chunk in their presence caches and would skip its
// re-upload as "already stored". GC's batches are announced in gc/state
// (services/gcguard), which only the GC lock's holder writes; a quarantine
// must not wait for that lock, so it has its own marker (docs/gc.md,
// "Quarantine").

// removalsKey is rewritten (with a fresh "seq") on every announced removal.
const removalsKey = "admin/chunk-removals"

// announceRemoval tells the other replicas that a chunk was removed, so
// that they empty their presence caches (WatchRemovals).
func (s *Service) announceRemoval(ctx context.Context, id ID) error {
	var b [16]byte
	rand.Read(b[:])
	seq := hex.EncodeToString(b[:])
	stamp := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	return s.store.Put(ctx, removalsKey, bytes.NewReader(stamp), int64(len(stamp)), storage.Metadata{"seq": seq, "chunk": id.String()})
}

// WatchRemovals reads the removal marker every interval and empties this
// process's presence cache whenever it changed. It
// returns when ctx ends.
func (s *Service) WatchRemovals(ctx context.Context, interval time.Duration) {
	last := ""
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		last = s.pollRemovals(ctx, last)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pollRemovals is one look at the marker; last is the seq seen before ("" at
// the first look, which empties the cache too: a removal may just have
// happened). It returns the seq seen now.
func (s *Service) pollRemovals(ctx context.Context, last string) string {
	info, err := s.store.Stat(ctx, removalsKey)
	switch {
	case err == nil:
		seq := info.Metadata["seq"]
		// Its own announcements too: another process's announcement may
		// have come and been overwritten by this one's since the last look.
		if seq != last {
			s.ForgetAll()
			s.log.Info("chunk removal announced: presence cache emptied", "chunk", info.Metadata["chunk"])
		}
		return seq
	case errors.Is(err, storage.ErrNotFound):
	case ctx.Err() == nil:
		s.log.Debug("chunk removal marker unreadable", "err", err)
	}
	return last
}
