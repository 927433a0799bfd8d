// Package gcguard keeps garbage collection from deleting a chunk that a
// catalog commit in the same process is about to reference.
//
// GC marks the chunks referenced by every published index, then deletes the
// unreferenced ones older than its cutoff. An index or snapshot file
// committed while GC runs may reference an old chunk that the mark did not
// see. The catalog and GC therefore meet here:
//
//   - Before a commit checks that its chunks exist, it takes a Ticket.
//   - Once checked, it registers its chunk ids with Commit, and keeps the
//     registration (Done) until the file is published. A GC run that is
//     active at any time during the registration, or starts while it is
//     pending, keeps those ids.
//   - GC decides and executes each delete batch inside Run.Delete, which
//     holds the guard's lock shared; Commit takes it exclusively. So a
//     commit registers either before a batch is decided (the batch sees
//     its ids) or after the batch's deletes are done, in which case Commit
//     reports recheck: the caller re-reads, from storage and not from any
//     cache, that its chunks still exist, and refuses the commit if a delete
//     won the race. No index is ever published with a dangling reference.
//
// The guard is per process: with several chunk-service replicas, GC runs on
// one of them and commits on the others are not registered with it (see the
// README).
package gcguard

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// ErrRunning: a GC run is already active in this process.
var ErrRunning = errors.New("a garbage collection is already running")

// IDs is a set of chunk ids.
type IDs = map[chunk.ID]struct{}

// Guard is shared by the catalog and GC of one process. The zero value is
// not usable; call New.
type Guard struct {
	// mu is held shared by a delete batch while it decides and deletes,
	// and exclusively by a commit while it registers.
	mu      sync.RWMutex
	state   sync.Mutex // run and pending
	run     *Run
	pending map[*Commit]struct{}
	batches atomic.Uint64 // delete batches executed since start
	waiting atomic.Int64
}

// New returns a guard with no GC running.
func New() *Guard { return &Guard{pending: map[*Commit]struct{}{}} }

// Ticket marks the moment a commit started to check its chunks.
type Ticket uint64

// Ticket is taken before a commit checks that its chunks exist.
func (g *Guard) Ticket() Ticket { return Ticket(g.batches.Load()) }

// Commit is a registered commit.
type Commit struct {
	g   *Guard
	ids IDs
}

// Commit registers the ids a commit references, after the commit checked
// they exist (with ticket t taken before the check), and before it
// publishes. It waits while a delete batch is running. recheck is true when
// any delete batch ran since t: the caller must then confirm from storage
// (not a cache) that every id still exists, and refuse to publish if not.
// The caller must not modify ids until Done, and calls Done once the file
// is published or the commit abandoned.
func (g *Guard) Commit(t Ticket, ids IDs) (c *Commit, recheck bool) {
	c = &Commit{g: g, ids: ids}
	g.waiting.Add(1)
	g.mu.Lock()
	g.waiting.Add(-1)
	defer g.mu.Unlock()
	g.state.Lock()
	g.pending[c] = struct{}{}
	if g.run != nil {
		g.run.keep(ids)
	}
	g.state.Unlock()
	return c, g.batches.Load() != uint64(t)
}

// Done ends the registration. A GC run active at any time since Commit
// keeps the ids until it ends.
func (c *Commit) Done() {
	c.g.state.Lock()
	delete(c.g.pending, c)
	c.g.state.Unlock()
}

// Waiting is how many commits are waiting for a delete batch to finish.
func (g *Guard) Waiting() int { return int(g.waiting.Load()) }

// Run is one active garbage collection.
type Run struct {
	g    *Guard
	kept IDs // of the commits registered during the run or pending at its start
}

func (r *Run) keep(ids IDs) {
	for id := range ids {
		r.kept[id] = struct{}{}
	}
}

// Begin starts a GC run; ErrRunning if one is active. The run must mark
// (list the published indexes) only after Begin returns: commits that
// finished before are then visible to it, and later ones are registered.
func (g *Guard) Begin() (*Run, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.state.Lock()
	defer g.state.Unlock()
	if g.run != nil {
		return nil, ErrRunning
	}
	r := &Run{g: g, kept: IDs{}}
	for c := range g.pending {
		r.keep(c.ids)
	}
	g.run = r
	return r, nil
}

// End finishes the run.
func (r *Run) End() {
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	r.g.state.Lock()
	defer r.g.state.Unlock()
	if r.g.run == r {
		r.g.run = nil
	}
}

// Delete runs fn, which decides which candidates to delete and deletes
// them, while no commit can register: protected reports the ids a commit
// registered during the run references, which fn must not delete. Batches
// may run concurrently with each other, never with a registration.
func (r *Run) Delete(fn func(protected func(chunk.ID) bool) error) error {
	r.g.mu.RLock()
	defer r.g.mu.RUnlock()
	defer r.g.batches.Add(1)
	return fn(r.protected)
}

// Check is Delete for a dry run: the same view, and no ticket is
// invalidated because nothing is deleted.
func (r *Run) Check(fn func(protected func(chunk.ID) bool)) {
	r.g.mu.RLock()
	defer r.g.mu.RUnlock()
	fn(r.protected)
}

// protected is called with mu held (shared), so kept does not change.
func (r *Run) protected(id chunk.ID) bool {
	_, ok := r.kept[id]
	return ok
}
