package admin_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Two casync indexes and a PMXBCKUP snapshot share chunks; a third index
// uses SHA-512/256. Deleting one index and collecting with grace 0 removes
// exactly the chunks only it used, plus chunks nothing ever referenced;
// everything still referenced stays and reads back.
func TestGCRemovesExactlyTheUnreferenced(t *testing.T) {
	for _, st := range append(stores[:len(stores):len(stores)], struct {
		name string
		open func(testing.TB) storage.Store
	}{"memory-256-prefixes", memoryStore}) {
		t.Run(st.name, func(t *testing.T) {
			cfg := admin.Config{}
			if strings.HasSuffix(st.name, "256-prefixes") {
				cfg.ListPrefixes = 256
			}
			e := newEnv(t, st.open(t), cfg)
			shared := makeBlobs(1, 10, 1024, sha256Alg)
			aOnly := makeBlobs(2, 7, 1024, sha256Alg)
			bOnly := makeBlobs(3, 5, 1024, sha256Alg)
			snapOnly := makeBlobs(4, 4, 1024, sha256Alg)
			orphans := makeBlobs(5, 3, 1024, sha256Alg)
			other := makeBlobs(6, 6, 1024, sha512Alg)
			e.upload(t, shared, aOnly, bOnly, snapOnly, orphans, other)
			e.mustPutIndex(t, "images/a.caibx", concat(shared, aOnly, shared[:1]))
			e.mustPutIndex(t, "images/b.caibx", concat(shared[:5], bOnly))
			e.mustPutIndex(t, "trees/c.caidx", concat(other, other[:2]))
			e.mustWriteSnapshot(t, "host", "web-01", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), "root.pxar", concat(shared[3:], snapOnly))
			if _, err := e.catalog.DeleteIndex(t.Context(), &chunkbridgev1.DeleteIndexRequest{Name: "images/a.caibx"}); err != nil {
				t.Fatal(err)
			}
			gone := concat(aOnly, orphans)
			kept := concat(shared, bOnly, snapOnly, other)

			dry := e.gc(t, 0, true)
			if dry.ChunksDeleted != int64(len(gone)) || !dry.DryRun {
				t.Fatalf("dry run would delete %d chunks, want %d", dry.ChunksDeleted, len(gone))
			}
			for _, b := range gone {
				if !e.exists(t, b.id) {
					t.Fatal("a dry run deleted a chunk")
				}
			}

			r := e.gc(t, 0, false)
			t.Logf("report: %v", r)
			if r.ChunksDeleted != int64(len(gone)) || r.ChunksScanned != int64(len(gone)+len(kept)) ||
				r.ChunksKept != int64(len(kept)) || r.ChunksReferenced != int64(len(kept)) || r.ReferencedChunks != int64(len(kept)) ||
				r.IndexFiles != 3 || r.ReferencedMissing != 0 || r.ChunksRecent != 0 || r.ChunksProtected != 0 {
				t.Fatalf("report %v; want %d deleted of %d scanned, %d kept, 3 index files", r, len(gone), len(gone)+len(kept), len(kept))
			}
			if r.BytesDeleted <= 0 || r.BytesDeleted+r.BytesKept != r.BytesScanned || r.BytesDeleted != dry.BytesDeleted {
				t.Fatalf("bytes: deleted %d + kept %d != scanned %d (dry run said %d)", r.BytesDeleted, r.BytesKept, r.BytesScanned, dry.BytesDeleted)
			}
			for _, b := range gone {
				if e.exists(t, b.id) {
					t.Fatalf("chunk %s that only the deleted index used survived", b.id)
				}
			}
			for _, b := range kept {
				e.readsBack(t, b)
			}
			for _, name := range []string{"images/b.caibx", "trees/c.caidx"} {
				if _, err := e.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: name}); err != nil {
					t.Fatal(err)
				}
			}
			// The chunk service learned that the deleted chunks are gone.
			ids := make([]chunk.ID, len(gone))
			for i, b := range gone {
				ids[i] = b.id
			}
			if missing, err := e.chunks.FindMissing(t.Context(), ids); err != nil || len(missing) != len(gone) {
				t.Fatalf("FindMissing after GC: %d of %d missing, %v", len(missing), len(gone), err)
			}
			// Nothing left to collect; a new orphan within the grace stays.
			fresh := makeBlobs(7, 2, 512, sha256Alg)
			e.upload(t, fresh)
			r = e.gc(t, time.Hour, false)
			if r.ChunksDeleted != 0 || r.ChunksRecent != 2 {
				t.Fatalf("second GC: %v; want nothing deleted and 2 recent", r)
			}
			st, err := e.adm.GetGCStatus(t.Context(), &chunkbridgev1.GetGCStatusRequest{})
			if err != nil || st.Running || st.Last.GetChunksRecent() != 2 {
				t.Fatalf("GetGCStatus = %v, %v", st, err)
			}
		})
	}
}

// The race: while GC runs with grace 0, clients upload new chunks, and
// commit a casync index and a snapshot file that reference old chunks no
// published file referenced when GC marked. Hooks hold GC at fixed points
// so the interleaving is the same every run. Nothing referenced and nothing
// recent may be lost, and a commit whose old chunk a delete batch took
// first must fail clearly rather than publish a dangling index.
func TestGCRace(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			var (
				hooks      admin.Hooks
				e          *env
				oldForIdx  = makeBlobs(10, 3, 800, sha256Alg) // referenced by an index committed during GC
				oldForSnap = makeBlobs(11, 2, 800, sha256Alg) // referenced by a snapshot committed during GC
				victim     = makeBlobs(12, 1, 800, sha256Alg) // referenced by a commit that loses the race
				orphans    = makeBlobs(13, 4, 800, sha256Alg) // never referenced: collected
				base       = makeBlobs(14, 5, 800, sha256Alg) // referenced all along
				during     = makeBlobs(15, 20, 800, sha256Alg)
			)
			var sweeping []blob // uploaded while the sweep runs
			var sweepMu sync.Mutex
			stopUploads := make(chan struct{})
			var uploaders sync.WaitGroup
			lost := make(chan error, 1)
			waiting := make(chan struct{}, 1) // the lost commit waits for a batch
			var raced atomic.Bool

			var marked atomic.Bool
			hooks.AfterMark = func() {
				if marked.Swap(true) {
					return // the first collection only
				}
				// GC has marked: oldForIdx and oldForSnap are unreferenced
				// and older than the cutoff. Upload new chunks and commit
				// both files concurrently, and let them finish.
				var g errgroup.Group
				g.Go(func() error { e.upload(t, during); return nil })
				g.Go(func() error {
					e.upload(t, during[:10])
					return e.putIndex(context.Background(), "during.caibx", concat(oldForIdx, during[:10]))
				})
				g.Go(func() error {
					e.upload(t, during[10:])
					return e.writeSnapshot(context.Background(), "vm", "100", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), "disk", concat(oldForSnap, during[10:]))
				})
				if err := g.Wait(); err != nil {
					t.Errorf("commit during GC: %v", err)
				}
				// Uploads that go on while the sweep lists and deletes.
				uploaders.Add(1)
				go func() {
					defer uploaders.Done()
					for i := uint64(0); ; i++ {
						select {
						case <-stopUploads:
							return
						default:
						}
						b := makeBlobs(1000+i, 1, 600, sha256Alg)
						e.upload(t, b)
						sweepMu.Lock()
						sweeping = append(sweeping, b...)
						sweepMu.Unlock()
					}
				}()
			}
			hooks.InDeleteBatch = func(ids []chunk.ID) {
				if !slices.Contains(ids, victim[0].id) {
					return
				}
				if raced.Swap(true) {
					return
				}
				// This batch will delete victim. A commit that checked that
				// victim exists (it still does) now waits for the batch.
				go func() { lost <- e.putIndex(context.Background(), "lost.caibx", concat(base[:1], victim)) }()
				<-waiting
			}
			e = newEnvGuard(t, st.open(t), admin.Config{Hooks: hooks, DeleteBatch: 2}, gcguard.Config{Hooks: gcguard.Hooks{Waiting: func(gcguard.State) {
				select {
				case waiting <- struct{}{}:
				default:
				}
			}}})
			e.upload(t, oldForIdx, oldForSnap, victim, orphans, base)
			e.mustPutIndex(t, "base.caibx", base)

			r := e.gc(t, 0, false)
			close(stopUploads)
			uploaders.Wait()
			t.Logf("report: %v (%d uploads during the sweep)", r, len(sweeping))

			// The commit that lost the race failed clearly, and nothing
			// dangling was published.
			if !raced.Load() {
				t.Fatal("no delete batch held the victim")
			}
			lostRace := <-lost
			if status.Code(lostRace) != codes.FailedPrecondition || !strings.Contains(lostRace.Error(), "garbage collection deleted") {
				t.Fatalf("the commit that lost the race: %v, want FailedPrecondition", lostRace)
			}
			if _, err := e.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: "lost.caibx"}); status.Code(err) != codes.NotFound {
				t.Fatalf("the refused index is visible: %v", err)
			}
			// Everything referenced or recent is there and reads back.
			sweepMu.Lock()
			defer sweepMu.Unlock()
			for _, b := range concat(oldForIdx, oldForSnap, base, during, sweeping) {
				e.readsBack(t, b)
			}
			for _, b := range concat(victim, orphans) {
				if e.exists(t, b.id) {
					t.Fatalf("unreferenced old chunk %s survived", b.id)
				}
			}
			if r.ChunksProtected != int64(len(oldForIdx)+len(oldForSnap)) {
				t.Fatalf("protected %d chunks, want %d", r.ChunksProtected, len(oldForIdx)+len(oldForSnap))
			}
			if r.ChunksDeleted != int64(len(victim)+len(orphans)) {
				t.Fatalf("deleted %d chunks, want %d", r.ChunksDeleted, len(victim)+len(orphans))
			}
			// Both files committed during GC survive a second collection,
			// which takes the chunks uploaded during the first one's sweep:
			// nothing references them. The last of them may share the file
			// system's clock tick (a few ms) with the second run's start;
			// such a chunk is not older than the cutoff and is kept as
			// recent, and only such a chunk.
			r2 := e.gc(t, 0, false)
			if r2.ReferencedMissing != 0 || r2.IndexFiles != 3 || r2.ChunksDeleted+r2.ChunksRecent != int64(len(sweeping)) {
				t.Fatalf("second GC: %v; want %d deleted or recent", r2, len(sweeping))
			}
			// (Stat's times may be whole seconds: S3's Last-Modified is.)
			for _, b := range sweeping {
				info, err := e.store.Stat(t.Context(), b.id.Key())
				if err == nil && info.Modified.Before(r2.Cutoff.AsTime().Truncate(time.Second)) {
					t.Fatalf("second GC kept %s, modified %v, before its cutoff %v", b.id, info.Modified, r2.Cutoff.AsTime())
				}
			}
			rep, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			if n := rep.Corrupt + rep.Missing + rep.Unreadable + rep.Unavailable + rep.IndexesCorrupt; n != 0 {
				t.Fatalf("verify after the race: %v", rep)
			}
		})
	}
}

func TestGCOneAtATimeAndStatus(t *testing.T) {
	release := make(chan struct{})
	marked := make(chan struct{})
	var once sync.Once
	e := newEnv(t, memoryStore(t), admin.Config{Hooks: admin.Hooks{AfterMark: func() { once.Do(func() { close(marked); <-release }) }}})
	e.upload(t, makeBlobs(1, 3, 100, sha256Alg))
	first := make(chan error)
	go func() {
		_, err := e.adm.RunGC(context.Background(), &chunkbridgev1.RunGCRequest{})
		first <- err
	}()
	<-marked
	if _, err := e.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{}); status.Code(err) != codes.Aborted {
		t.Fatalf("a second GC while one runs = %v, want Aborted", err)
	}
	st, err := e.adm.GetGCStatus(t.Context(), &chunkbridgev1.GetGCStatusRequest{})
	if err != nil || !st.Running || st.Phase != "mark" || st.Last != nil {
		t.Fatalf("status while running = %v, %v", st, err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// Default grace (24h): the fresh chunks are kept.
	st, _ = e.adm.GetGCStatus(t.Context(), &chunkbridgev1.GetGCStatusRequest{})
	if st.Running || st.Last.GetChunksRecent() != 3 || st.Last.GetChunksDeleted() != 0 {
		t.Fatalf("status after = %v", st)
	}
	if got := st.Last.Started.AsTime().Sub(st.Last.Cutoff.AsTime()); got != 24*time.Hour {
		t.Fatalf("default grace = %v, want 24h", got)
	}
	if _, err := e.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{Grace: nil, DryRun: true}); err != nil {
		t.Fatal(err)
	}
}

// A file GC cannot read stops it before anything is deleted.
func TestGCStopsOnAnUnreadableIndex(t *testing.T) {
	e := newEnv(t, memoryStore(t), admin.Config{})
	orphans := makeBlobs(1, 3, 100, sha256Alg)
	e.upload(t, orphans)
	e.store.Put(t.Context(), "indexes/broken.caibx", strings.NewReader("not an index"), 12, nil)
	_, err := e.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{Grace: nil})
	if status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "indexes/broken.caibx") || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Fatalf("GC over a broken index = %v, want DataLoss naming it", err)
	}
	for _, b := range orphans {
		if !e.exists(t, b.id) {
			t.Fatal("a GC that could not mark deleted a chunk")
		}
	}
}

// Two replicas on one store: GC on one deletes a chunk the other has in
// its presence cache; the other's WatchGC sees the run and empties its
// cache, so it stops claiming the chunk (and its clients upload it again).
func TestGCOnAnotherReplicaEmptiesPresenceCache(t *testing.T) {
	store := memoryStore(t)
	a := newEnv(t, store, admin.Config{})
	b := newEnv(t, store, admin.Config{})
	old := makeBlobs(1, 2, 300, sha256Alg)
	b.upload(t, old) // b's cache now claims both
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go b.admin.WatchGC(ctx, 5*time.Millisecond)
	if r := a.gc(t, 0, false); r.ChunksDeleted != 2 {
		t.Fatalf("GC on a: %v", r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		missing, err := b.chunks.FindMissing(t.Context(), []chunk.ID{old[0].id, old[1].id})
		if err != nil {
			t.Fatal(err)
		}
		if len(missing) == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("replica b still claims chunks that GC on replica a deleted")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The race the per-process guard could not see: GC with grace 0 on replica
// a while replica b, sharing the store, commits files that reuse old,
// unreferenced chunks its presence cache claims. Hooks fix the
// interleaving. A commit made after a's mark is spared by a's batches; a
// commit that registers while a batch deletes its chunk waits for the
// batch and is refused; nothing acknowledged loses a chunk.
func TestGCRaceAcrossReplicas(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			var (
				a, b     *env
				hooks    admin.Hooks
				reused   = makeBlobs(20, 3, 700, sha256Alg) // old, unreferenced, reused by b after a's mark
				snapOld  = makeBlobs(21, 2, 700, sha256Alg) // the same, by a snapshot file
				victim   = makeBlobs(22, 1, 700, sha256Alg) // reused by b while a batch deletes it
				orphans  = makeBlobs(23, 3, 700, sha256Alg)
				base     = makeBlobs(24, 2, 700, sha256Alg)
				waiting  = make(chan struct{}, 1)
				lost     = make(chan error, 1)
				raced    atomic.Bool
				reuseErr = make(chan error, 2)
			)
			hooks.AfterMark = func() {
				// a's mark did not see these files: b commits them now.
				reuseErr <- b.putIndex(context.Background(), "reuse.caibx", concat(base, reused))
				reuseErr <- b.writeSnapshot(context.Background(), "vm", "7", time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), "disk", snapOld)
			}
			hooks.InDeleteBatch = func(ids []chunk.ID) {
				if !slices.Contains(ids, victim[0].id) || raced.Swap(true) {
					return
				}
				go func() { lost <- b.putIndex(context.Background(), "lost.caibx", concat(base[:1], victim)) }()
				<-waiting // b registered after this batch listed, and waits for it
			}
			store := st.open(t)
			a = newEnvGuard(t, store, admin.Config{Hooks: hooks, DeleteBatch: 2}, gcguard.Config{Replica: "a"})
			b = newEnvGuard(t, store, admin.Config{}, gcguard.Config{Replica: "b", Hooks: gcguard.Hooks{Waiting: func(gcguard.State) {
				select {
				case waiting <- struct{}{}:
				default:
				}
			}}})
			b.upload(t, reused, snapOld, victim, orphans, base) // b's presence cache claims them all
			b.mustPutIndex(t, "base.caibx", base)

			r := a.gc(t, 0, false)
			for range 2 {
				if err := <-reuseErr; err != nil {
					t.Fatalf("b's commit after a's mark: %v", err)
				}
			}
			if !raced.Load() {
				t.Fatal("no delete batch held the victim")
			}
			if err := <-lost; status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "garbage collection deleted") {
				t.Fatalf("b's commit that lost the race: %v, want FailedPrecondition", err)
			}
			if _, err := b.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: "lost.caibx"}); status.Code(err) != codes.NotFound {
				t.Fatalf("the refused index is visible: %v", err)
			}
			for _, x := range concat(reused, snapOld, base) {
				b.readsBack(t, x)
			}
			for _, x := range concat(victim, orphans) {
				if b.exists(t, x.id) {
					t.Fatalf("unreferenced old chunk %s survived", x.id)
				}
			}
			if r.ChunksProtected != int64(len(reused)+len(snapOld)) || r.ChunksDeleted != int64(len(victim)+len(orphans)) {
				t.Fatalf("a's report %v: want %d protected, %d deleted", r, len(reused)+len(snapOld), len(victim)+len(orphans))
			}
			// b's presence cache no longer claims what a deleted: b
			// learnt of a's batches when it committed.
			if missing, err := b.chunks.FindMissing(t.Context(), []chunk.ID{victim[0].id, orphans[0].id}); err != nil || len(missing) != 2 {
				t.Fatalf("b still claims chunks a deleted: missing %v, %v", missing, err)
			}
			// The lock passes to b; its run finds nothing dangling.
			r2 := b.gc(t, 0, false)
			if r2.ReferencedMissing != 0 || r2.ChunksDeleted != 0 {
				t.Fatalf("b's GC after a's: %v", r2)
			}
			rep, _ := b.verify(t, &chunkbridgev1.VerifyRequest{})
			if n := rep.Corrupt + rep.Missing + rep.Unreadable + rep.Unavailable + rep.IndexesCorrupt; n != 0 {
				t.Fatalf("verify after the race: %v", rep)
			}
		})
	}
}

// A run on one replica shows in another replica's status, by name.
func TestGCStatusNamesTheReplicaRunningIt(t *testing.T) {
	store := memoryStore(t)
	marked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	a := newEnvGuard(t, store, admin.Config{Hooks: admin.Hooks{AfterMark: func() { once.Do(func() { close(marked); <-release }) }}}, gcguard.Config{Replica: "replica-a"})
	b := newEnvGuard(t, store, admin.Config{}, gcguard.Config{Replica: "replica-b"})
	done := make(chan error)
	go func() { _, err := a.adm.RunGC(context.Background(), &chunkbridgev1.RunGCRequest{}); done <- err }()
	<-marked
	st, err := b.adm.GetGCStatus(t.Context(), &chunkbridgev1.GetGCStatusRequest{})
	if err != nil || !st.Running || !strings.Contains(st.Phase, "replica-a") {
		t.Fatalf("b's status while a runs = %v, %v", st, err)
	}
	if _, err := b.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{}); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "replica-a") {
		t.Fatalf("GC on b while a runs = %v, want Aborted naming replica-a", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st, err := b.adm.GetGCStatus(t.Context(), &chunkbridgev1.GetGCStatusRequest{}); err != nil || st.Running {
		t.Fatalf("b's status after a's run = %v, %v", st, err)
	}
}
