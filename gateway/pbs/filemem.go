package pbs

import (
	"context"
	"fmt"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// Whole files (previous indexes and blobs read for a client, blobs
// uploaded, a session's manifest) are held in memory while a request
// serves them: every session's together take their share of one budget
// (Server.FileMemory), so N sessions wait their turn instead of holding N
// copies of a large index at once.

const defaultFileMemory = 256 << 20

// mapEntryBytes estimates one entry of a chunk map with its share of the
// map's buckets.
const mapEntryBytes = 64

func (s *Server) fileBudget() *budget.Budget {
	s.fileMemOnce.Do(func() { s.fileMem = budget.New(session.OrDefault(s.FileMemory, defaultFileMemory)) })
	return s.fileMem
}

// fileShare is one request's (or one session's manifest's) share of the
// file budget. Not safe for concurrent use.
type fileShare struct {
	b *budget.Budget
	n int64
}

// holdFile takes n bytes of the file budget (at most all of it, so a
// file larger than the budget waits for every other to be done), waiting
// its turn until ctx ends.
func (s *Server) holdFile(ctx context.Context, n int64) (*fileShare, error) {
	b := s.fileBudget()
	n = b.Clamp(n)
	if !b.TryAcquire(n) {
		if fileWaits != nil {
			fileWaits()
		}
		err := b.Acquire(ctx, n)
		if fileWaited != nil {
			fileWaited(err)
		}
		if err != nil {
			return nil, fmt.Errorf("waiting for %d bytes of the gateway's file memory, which other sessions' files hold (raise --pbs-file-memory-bytes if this is common): %w", n, err)
		}
	}
	if fileHeld != nil {
		fileHeld()
	}
	return &fileShare{b: b, n: n}, nil
}

// shrink gives back what is held above n, once the real size is known.
func (f *fileShare) shrink(n int64) {
	if f == nil {
		return
	}
	if n = f.b.Clamp(n); n < f.n {
		f.b.Release(f.n - n)
		f.n = n
	}
}

// release gives the whole share back; a second call does nothing.
func (f *fileShare) release() {
	if f == nil {
		return
	}
	f.b.Release(f.n)
	f.n = 0
}

// fileWaits, fileWaited and fileHeld, set by tests, are called when a
// request has to wait for the file budget, when its wait ends, and once
// it holds its share.
var (
	fileWaits, fileHeld func()
	fileWaited          func(error)
)

// indexEntries is how many entries a stored index of size bytes has.
func indexEntries(size int64, fixed bool) int64 {
	entry := int64(pbsindex.DynamicEntrySize)
	if fixed {
		entry = pbsindex.FixedEntrySize
	}
	return max(0, size-pbsindex.HeaderSize) / entry
}

// indexCost estimates the memory readFile needs for a stored index of
// size bytes: the file as read, its parsed entries (and, dynamic, their
// converted copy), the converted file, and the chunk map.
func indexCost(size int64, fixed bool) int64 {
	n := indexEntries(size, fixed)
	if fixed {
		return size + n*pbsindex.FixedEntrySize + pbsidx.HeaderSize + n*pbsidx.FixedEntrySize + n*mapEntryBytes
	}
	return size + 2*n*pbsindex.DynamicEntrySize + pbsidx.HeaderSize + n*pbsidx.DynamicEntrySize + n*mapEntryBytes
}

// reuseCost estimates the memory reuse needs for a stored fixed index of
// size bytes: the file, its digests, and two maps of them (the chunks
// checked, and the writer's slots).
func reuseCost(size int64) int64 {
	n := indexEntries(size, true)
	return size + n*pbsindex.FixedEntrySize + 2*n*mapEntryBytes
}

// listedSize is the stored size of the snapshot file name as the
// snapshot's listing gives it, or -1 if it does not list it.
func listedSize(sn *chunkbridgev1.Snapshot, name string) int64 {
	for _, f := range sn.GetFiles() {
		if f.GetName() == name {
			return f.GetSize()
		}
	}
	for _, b := range sn.GetBlobs() {
		if b.GetName() == name {
			return b.GetSize()
		}
	}
	return -1
}
