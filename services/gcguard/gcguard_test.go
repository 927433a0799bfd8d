package gcguard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.RunMain(m)) }

func id(b byte) chunk.ID { return chunk.ID{b} }

func set(ids ...chunk.ID) gcguard.IDs {
	s := gcguard.IDs{}
	for _, i := range ids {
		s[i] = struct{}{}
	}
	return s
}

// The protocol lives in the store, so it is tested on each kind: the
// listing and PutIfAbsent semantics it relies on are the store's.
var stores = []struct {
	name string
	open func(testing.TB) storage.Store
}{
	{"memory", func(testing.TB) storage.Store { return memory.New() }},
	{"fs", fsStore},
	{"minio", func(t testing.TB) storage.Store { return miniotest.SharedStore(t) }},
}

func fsStore(t testing.TB) storage.Store {
	s, err := fs.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func eachStore(t *testing.T, fn func(t *testing.T, open func(testing.TB) storage.Store)) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { fn(t, st.open) })
	}
}

// replica is one process's guard, counting how often its presence cache
// would have been emptied.
type replica struct {
	*gcguard.Guard
	emptied atomic.Int64
}

func newReplica(store storage.Store, name string, cfg gcguard.Config) *replica {
	r := &replica{}
	cfg.Replica = name
	cfg.OnChange = func() { r.emptied.Add(1) }
	r.Guard = gcguard.New(store, cfg)
	return r
}

func begin(t *testing.T, g *replica) *gcguard.Run {
	t.Helper()
	run, err := g.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return run
}

func commit(t *testing.T, g *replica, tk gcguard.Ticket, ids gcguard.IDs) (*gcguard.Commit, bool) {
	t.Helper()
	c, recheck, err := g.Commit(t.Context(), tk, ids)
	if err != nil {
		t.Fatal(err)
	}
	return c, recheck
}

// protectedIn reports what a delete batch of run would have to spare.
func protectedIn(t *testing.T, run *gcguard.Run, ids ...chunk.ID) []bool {
	t.Helper()
	out := make([]bool, len(ids))
	err := run.Check(t.Context(), func(p func(chunk.ID) bool) {
		for i, x := range ids {
			out[i] = p(x)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func noop(context.Context, func(chunk.ID) bool) error { return nil }

// One run at a time across replicas; the lock passes on at End.
func TestOneRunAtATimeAcrossReplicas(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) storage.Store) {
		store := open(t)
		a, b := newReplica(store, "a", gcguard.Config{}), newReplica(store, "b", gcguard.Config{})
		run := begin(t, a)
		if _, err := b.Begin(t.Context()); !errors.Is(err, gcguard.ErrRunning) || !strings.Contains(err.Error(), "on a") {
			t.Fatalf("Begin on b while a runs = %v, want ErrRunning naming a", err)
		}
		if _, err := a.Begin(t.Context()); !errors.Is(err, gcguard.ErrRunning) {
			t.Fatalf("second Begin on a = %v, want ErrRunning", err)
		}
		run.End(t.Context())
		begin(t, b).End(t.Context())
		if st := a.Known(); st.Phase != gcguard.Idle {
			t.Fatalf("a knows %+v after its run ended", st)
		}
	})
}

// A lock not renewed for LockTTL is taken over by another replica; the
// old holder then deletes nothing more and leaves the new run's state
// alone.
func TestStaleLockIsTakenOverAndTheHolderIsFenced(t *testing.T) {
	dir := t.TempDir()
	store, err := fs.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := gcguard.Config{LockTTL: time.Hour, BatchTimeout: time.Minute}
	a, b := newReplica(store, "a", cfg), newReplica(store, "b", cfg)
	run := begin(t, a)
	// As far as the store's clock says, a stopped renewing two hours ago
	// (the fs store's modification times are the files').
	locks, _ := filepath.Glob(filepath.Join(dir, "gc", "lock", "*"))
	if len(locks) != 1 {
		t.Fatalf("lock files: %v", locks)
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(locks[0], old, old); err != nil {
		t.Fatal(err)
	}
	brun := begin(t, b)
	defer brun.End(t.Context())
	deleted := false
	if err := run.Delete(t.Context(), func(context.Context, func(chunk.ID) bool) error { deleted = true; return nil }); err == nil || deleted || !strings.Contains(err.Error(), "lost its lock") {
		t.Fatalf("a's batch after the takeover: %v (ran: %v), want refused", err, deleted)
	}
	run.End(t.Context())
	if st := readState(t, store); st.Holder != "b" || st.Phase != gcguard.Running {
		t.Fatalf("after a's run ended the store says %+v; a must leave b's run alone", st)
	}
	if err := brun.Delete(t.Context(), noop); err != nil {
		t.Fatalf("b's batch after the takeover: %v", err)
	}
}

// flaky fails every write under gc/lock/ while down is set: a replica cut
// off from the store, or paused, cannot renew its lock.
type flaky struct {
	storage.Store
	down atomic.Bool
}

func (f *flaky) Put(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) error {
	if f.down.Load() && strings.HasPrefix(key, "gc/lock/") {
		return storage.ErrUnavailable
	}
	return f.Store.Put(ctx, key, r, size, meta)
}

// A holder that could not renew its lock for LockTTL - BatchTimeout -
// LockTTL/8 starts no batch: any batch it started earlier ends, at its
// timeout, before another replica may take the lock over.
func TestHolderThatCannotRenewStopsDeleting(t *testing.T) {
	store := &flaky{Store: memory.New()}
	renewals := make(chan error, 100)
	cfg := gcguard.Config{LockTTL: 400 * time.Millisecond, BatchTimeout: 100 * time.Millisecond,
		Hooks: gcguard.Hooks{Renewed: func(err error) { renewals <- err }}}
	a := newReplica(store, "a", cfg)
	run := begin(t, a)
	defer run.End(t.Context())
	if err := <-renewals; err != nil {
		t.Fatalf("first renewal: %v", err)
	}
	if err := run.Delete(t.Context(), noop); err != nil {
		t.Fatalf("batch with a fresh lock: %v", err)
	}
	store.down.Store(true)
	// The limit is 400 - 100 - 50 = 250ms after the last renewal; the
	// heartbeat tries every 100ms, so three failures are past it.
	for range 3 {
		if err := <-renewals; err == nil {
			t.Fatal("a renewal succeeded while the store refused it")
		}
	}
	deleted := false
	err := run.Delete(t.Context(), func(context.Context, func(chunk.ID) bool) error { deleted = true; return nil })
	if err == nil || deleted || !strings.Contains(err.Error(), "could not renew its lock") {
		t.Fatalf("batch after the lock went unrenewed: %v (ran: %v), want refused", err, deleted)
	}
}

func readState(t *testing.T, store storage.Store) gcguard.State {
	t.Helper()
	rc, _, err := store.Get(t.Context(), "gc/state")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var st gcguard.State
	if err := json.NewDecoder(rc).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// The windows of a commit against a delete batch, with the commit on one
// replica and GC on another. Each is driven by hooks to the same
// interleaving every run.
func TestCommitAgainstDeleteBatch(t *testing.T) {
	eachStore(t, func(t *testing.T, open func(testing.TB) storage.Store) {
		store := open(t)

		t.Run("no deletion since the ticket: no recheck", func(t *testing.T) {
			b := newReplica(store, "b", gcguard.Config{})
			c, recheck := commit(t, b, b.Ticket(), set(id(1)))
			c.Done(t.Context(), true)
			if recheck {
				t.Fatal("recheck without any deletion")
			}
		})

		t.Run("registered before the batch listed: spared", func(t *testing.T) {
			a, b := newReplica(store, "a", gcguard.Config{}), newReplica(store, "b", gcguard.Config{})
			c, _ := commit(t, b, b.Ticket(), set(id(2)))
			defer c.Done(t.Context(), true)
			run := begin(t, a)
			defer run.End(t.Context())
			err := run.Delete(t.Context(), func(_ context.Context, protected func(chunk.ID) bool) error {
				if !protected(id(2)) {
					t.Error("a batch does not spare a commit registered before it")
				}
				if protected(id(3)) {
					t.Error("a batch spares a chunk nobody registered")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})

		t.Run("registered after the batch listed: waits, then rechecks", func(t *testing.T) {
			waiting := make(chan gcguard.State, 1)
			a := newReplica(store, "a", gcguard.Config{})
			b := newReplica(store, "b", gcguard.Config{Hooks: gcguard.Hooks{Waiting: func(st gcguard.State) {
				select {
				case waiting <- st:
				default:
				}
			}}})
			ticket := b.Ticket()
			run := begin(t, a)
			defer run.End(t.Context())
			type result struct {
				c       *gcguard.Commit
				recheck bool
				err     error
			}
			done := make(chan result, 1)
			err := run.Delete(t.Context(), func(_ context.Context, protected func(chunk.ID) bool) error {
				go func() {
					c, recheck, err := b.Commit(context.Background(), ticket, set(id(4)))
					done <- result{c, recheck, err}
				}()
				st := <-waiting // b registered after the listing and read "deleting"
				if st.Phase != gcguard.Deleting || st.Holder != "a" {
					t.Errorf("b waits on %+v", st)
				}
				if protected(id(4)) {
					t.Error("the batch sees a registration made after it listed")
				}
				select {
				case <-done:
					t.Error("a commit went on while a delete batch was deleting")
				default:
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			r := <-done
			if r.err != nil || !r.recheck {
				t.Fatalf("the commit that waited for the batch: recheck %v, %v; want a recheck", r.recheck, r.err)
			}
			r.c.Done(t.Context(), true)
		})

		t.Run("a whole batch between check and registration: recheck", func(t *testing.T) {
			a, b := newReplica(store, "a", gcguard.Config{}), newReplica(store, "b", gcguard.Config{})
			learn, _ := commit(t, b, b.Ticket(), nil) // b learns the current state
			learn.Done(t.Context(), false)
			ticket := b.Ticket()
			run := begin(t, a)
			if err := run.Delete(t.Context(), noop); err != nil {
				t.Fatal(err)
			}
			run.End(t.Context())
			c, recheck := commit(t, b, ticket, set(id(5)))
			c.Done(t.Context(), true)
			if !recheck {
				t.Fatal("a commit checked before another replica's batch is not told to recheck")
			}
			if b.emptied.Load() == 0 {
				t.Fatal("b learnt of the batch but its presence cache was not emptied")
			}
			// A failed batch (which may have deleted some) counts too.
			ticket = b.Ticket()
			run = begin(t, a)
			run.Delete(t.Context(), func(context.Context, func(chunk.ID) bool) error { return errors.New("failed half way") })
			run.End(t.Context())
			if _, recheck := commit(t, b, ticket, set(id(5))); !recheck {
				t.Fatal("a failed batch does not ask for a recheck")
			}
		})

		t.Run("a batch that never ends: the commit rechecks after BatchTimeout", func(t *testing.T) {
			b := newReplica(store, "b", gcguard.Config{BatchTimeout: 50 * time.Millisecond})
			dead := []byte(`{"gen":1000,"phase":"deleting","run":"dead","holder":"gone"}`)
			if err := store.Put(t.Context(), "gc/state", bytes.NewReader(dead), int64(len(dead)), nil); err != nil {
				t.Fatal(err)
			}
			defer store.Delete(t.Context(), "gc/state")
			c, recheck := commit(t, b, gcguard.Ticket{}, set(id(6)))
			c.Done(t.Context(), true)
			if !recheck {
				t.Fatal("a commit after a dead batch is not told to recheck")
			}
			if tk := b.Ticket(); b.Known().Phase != gcguard.Deleting || tk == (gcguard.Ticket{}) {
				t.Fatalf("b knows %+v", b.Known())
			}
		})
	})
}

// A commit published while a run is active keeps protecting its chunks
// for that run (whose mark may have missed the file) and is removed by
// the next run; one published while no run is active is removed at once;
// one older than RegistrationTTL protects nothing and is removed.
func TestRegistrationLifetime(t *testing.T) {
	dir := t.TempDir()
	store, err := fs.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newReplica(store, "a", gcguard.Config{}), newReplica(store, "b", gcguard.Config{})
	pending := func() []string {
		var keys []string
		store.List(t.Context(), "gc/pending/", func(i storage.Info) error { keys = append(keys, i.Key); return nil })
		return keys
	}

	idle, _ := commit(t, b, b.Ticket(), set(id(1)))
	idle.Done(t.Context(), true)
	if p := pending(); len(p) != 0 {
		t.Fatalf("a commit published with no run active left %v", p)
	}

	run := begin(t, a)
	during, _ := commit(t, b, b.Ticket(), set(id(2)))
	during.Done(t.Context(), true)
	abandoned, _ := commit(t, b, b.Ticket(), set(id(3)))
	abandoned.Done(t.Context(), false)
	commit(t, b, b.Ticket(), set(id(4))) // its process dies before publishing
	files, _ := filepath.Glob(filepath.Join(dir, "gc", "pending", "*"))
	var expiredFile string
	for _, f := range files {
		if raw, _ := os.ReadFile(f); len(raw) == 32 && raw[0] == 4 {
			expiredFile = f
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(expiredFile, old, old); err != nil {
		t.Fatal(err)
	}
	if got := protectedIn(t, run, id(2), id(3), id(4)); !slices.Equal(got, []bool{true, false, false}) {
		t.Fatalf("protected (published during the run, abandoned, expired) = %v", got)
	}
	run.End(t.Context())
	if p := pending(); len(p) != 1 {
		t.Fatalf("after the run: %v, want only the one published during it", p)
	}
	run = begin(t, a)
	run.End(t.Context())
	if p := pending(); len(p) != 0 {
		t.Fatalf("after the next run: %v", p)
	}
}
