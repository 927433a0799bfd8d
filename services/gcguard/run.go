package gcguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Run is one active garbage collection: it holds the lock until End.
type Run struct {
	g     *Guard
	id    string
	lock  uint64
	start time.Time // on the store's clock
	began time.Time // on this process's clock, when start was read

	// published are the registrations whose commits had published before
	// this run listed the published files: End removes them.
	published []string

	stopBeat context.CancelFunc
	beatDone chan struct{}
	beatMu   sync.Mutex
	beat     time.Time // before the last lock write that succeeded
	lost     bool      // another process took the lock over

	batchMu sync.Mutex // one delete batch at a time: gc/state has one phase
	gen     uint64
	regsMu  sync.Mutex
	regs    map[string]bool // registrations read; true: expired
	kept    IDs             // chunks of every live registration read
}

// Begin takes the GC lock and starts a run; ErrRunning if a run holds it
// anywhere. The run must mark (list the published files) only after Begin
// returns: files published before are visible to it, and commits from
// now on are registered.
func (g *Guard) Begin(ctx context.Context) (*Run, error) {
	start, err := g.storeNow(ctx)
	if err != nil {
		return nil, err
	}
	r := &Run{g: g, id: randomHex(8), start: start, began: time.Now(), regs: map[string]bool{}, kept: IDs{}}
	if err := r.acquire(ctx); err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.stopBeat, r.beatDone = cancel, make(chan struct{})
	go r.heartbeat(bctx)
	ok := false
	defer func() {
		if !ok {
			r.End(context.WithoutCancel(ctx))
		}
	}()
	st, err := g.read(ctx)
	if err != nil {
		return nil, err
	}
	r.gen = st.Gen
	if err := g.write(ctx, State{Gen: r.gen, Phase: Running, Run: r.id, Holder: g.replica}); err != nil {
		return nil, err
	}
	err = g.store.List(ctx, publishedPrefix, func(i storage.Info) error {
		r.published = append(r.published, strings.TrimPrefix(i.Key, publishedPrefix))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list published registrations: %w", err)
	}
	ok = true
	return r, nil
}

// Start is when the run began, on the store's clock.
func (r *Run) Start() time.Time { return r.start }

// ID names the run in logs and in gc/state.
func (r *Run) ID() string { return r.id }

// acquire creates the next lock object when the current one is released
// or stale. PutIfAbsent makes exactly one of several contenders win.
func (r *Run) acquire(ctx context.Context) error {
	g := r.g
	var top uint64
	var topKey string
	err := g.store.List(ctx, lockPrefix, func(i storage.Info) error {
		if n, ok := parseLockKey(i.Key); ok && n > top {
			top, topKey = n, i.Key
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list the garbage collection lock: %w", err)
	}
	if top > 0 {
		info, err := g.store.Stat(ctx, topKey)
		switch {
		case errors.Is(err, storage.ErrNotFound): // released and removed meanwhile
		case err != nil:
			return fmt.Errorf("read the garbage collection lock %s: %w", topKey, err)
		case info.Metadata["state"] != "released":
			// The lock's time and start are both on the store's clock.
			if age := r.start.Sub(info.Modified); age < g.cfg.LockTTL {
				return fmt.Errorf("%w: run %s on %s holds the lock %s, renewed %s ago; it is taken for dead after %s without renewal",
					ErrRunning, info.Metadata["run"], info.Metadata["holder"], topKey, age.Round(time.Second), g.cfg.LockTTL)
			}
			g.log.Warn("garbage collection lock is stale; taking it over", "lock", topKey, "holder", info.Metadata["holder"], "run", info.Metadata["run"])
		}
	}
	r.lock = top + 1
	beat := time.Now()
	created, err := g.store.PutIfAbsent(ctx, lockKey(r.lock), bytes.NewReader(nil), 0, r.lockMeta("held"))
	if err != nil {
		return fmt.Errorf("take the garbage collection lock %s: %w", lockKey(r.lock), err)
	}
	if !created {
		return fmt.Errorf("%w: another replica took the lock %s just now", ErrRunning, lockKey(r.lock))
	}
	r.beat = beat
	if top > 0 {
		var old []string
		for n := top; n > 0 && len(old) < 16; n-- {
			old = append(old, lockKey(n))
		}
		if err := storage.DeleteBatch(ctx, g.store, old); err != nil {
			g.log.Debug("could not remove old garbage collection locks", "err", err)
		}
	}
	return nil
}

func (r *Run) lockMeta(state string) storage.Metadata {
	return storage.Metadata{"holder": r.g.replica, "run": r.id, "state": state}
}

// heartbeat renews the lock and notices a takeover.
func (r *Run) heartbeat(ctx context.Context) {
	defer close(r.beatDone)
	t := time.NewTicker(r.g.cfg.LockTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		at := time.Now()
		err := r.g.store.Put(ctx, lockKey(r.lock), bytes.NewReader(nil), 0, r.lockMeta("held"))
		if err == nil {
			_, err = r.g.store.Stat(ctx, lockKey(r.lock+1))
			if err == nil {
				r.beatMu.Lock()
				r.lost = true
				r.beatMu.Unlock()
				r.g.log.Error("garbage collection lock was taken over by another replica; this run deletes nothing more", "run", r.id)
				return
			}
			if errors.Is(err, storage.ErrNotFound) {
				err = nil
			}
		}
		if err == nil {
			r.beatMu.Lock()
			r.beat = at
			r.beatMu.Unlock()
		} else {
			r.g.log.Warn("could not renew the garbage collection lock", "lock", lockKey(r.lock), "err", err)
		}
		if h := r.g.cfg.Hooks.Renewed; h != nil {
			h(err)
		}
	}
}

// fenced refuses to start a delete batch, or to write gc/state, unless
// the lock is still this run's: not taken over (lock n+1 absent), and
// renewed recently enough that a batch ends, at its timeout, before anyone
// may take the lock over.
func (r *Run) fenced(ctx context.Context) error {
	r.beatMu.Lock()
	lost, beat := r.lost, r.beat
	r.beatMu.Unlock()
	limit := r.g.cfg.LockTTL - r.g.cfg.BatchTimeout - r.g.cfg.LockTTL/8
	if age := time.Since(beat); age > limit {
		return fmt.Errorf("garbage collection run %s could not renew its lock for %s (limit %s); it deleted nothing more: check the store's availability",
			r.id, age.Round(time.Millisecond), limit)
	}
	if !lost {
		_, err := r.g.store.Stat(ctx, lockKey(r.lock+1))
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return nil
		case err != nil:
			return fmt.Errorf("garbage collection run %s: check its lock: %w", r.id, err)
		}
		r.beatMu.Lock()
		r.lost = true
		r.beatMu.Unlock()
	}
	return fmt.Errorf("garbage collection run %s lost its lock to another replica; it deleted nothing more", r.id)
}

// Delete runs fn, which decides which candidates to delete and deletes
// them, as one batch: announced in gc/state first, then the registrations
// are listed; protected reports the chunks of every registered commit,
// which fn must not delete. fn must use ctx, which ends at the batch's
// timeout. Batches run one at a time.
func (r *Run) Delete(ctx context.Context, fn func(ctx context.Context, protected func(chunk.ID) bool) error) error {
	r.batchMu.Lock()
	defer r.batchMu.Unlock()
	if err := r.fenced(ctx); err != nil {
		return err
	}
	bctx, cancel := context.WithTimeout(ctx, r.g.cfg.BatchTimeout)
	defer cancel()
	r.gen++
	if err := r.g.write(bctx, State{Gen: r.gen, Phase: Deleting, Run: r.id, Holder: r.g.replica}); err != nil {
		return err
	}
	defer func() {
		// After the deletes, even failed ones: commits stop waiting. If
		// this write fails they wait out BatchTimeout and re-check.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.g.cfg.BatchTimeout)
		defer cancel()
		if err := r.g.write(wctx, State{Gen: r.gen, Phase: Running, Run: r.id, Holder: r.g.replica}); err != nil {
			r.g.log.Warn("could not end a garbage collection delete batch in the store; commits wait for its timeout", "err", err)
		}
	}()
	if err := r.scan(bctx); err != nil {
		return err
	}
	return fn(bctx, r.protected)
}

// Check is Delete for a dry run: the same view of the registrations, and
// nothing is announced because nothing is deleted.
func (r *Run) Check(ctx context.Context, fn func(protected func(chunk.ID) bool)) error {
	if err := r.scan(ctx); err != nil {
		return err
	}
	fn(r.protected)
	return nil
}

func (r *Run) protected(id chunk.ID) bool {
	r.regsMu.Lock()
	defer r.regsMu.Unlock()
	_, ok := r.kept[id]
	return ok
}

// scan reads the registrations not read yet. A registration older than
// RegistrationTTL was left by a process that died or gave up: its commit
// no longer publishes (PublishContext), so it protects nothing.
func (r *Run) scan(ctx context.Context) error {
	now := r.start.Add(time.Since(r.began))
	var fresh []string
	err := r.g.store.List(ctx, pendingPrefix, func(i storage.Info) error {
		r.regsMu.Lock()
		defer r.regsMu.Unlock()
		if _, seen := r.regs[i.Key]; seen {
			return nil
		}
		if now.Sub(i.Modified) > r.g.cfg.RegistrationTTL {
			r.regs[i.Key] = true
			return nil
		}
		fresh = append(fresh, i.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list commit registrations: %w", err)
	}
	for _, key := range fresh {
		ids := IDs{}
		err := r.readRegistration(ctx, key, ids)
		if errors.Is(err, storage.ErrNotFound) {
			continue // its commit ended meanwhile: listed by the mark, or abandoned
		}
		if err != nil {
			return err
		}
		r.regsMu.Lock()
		r.regs[key] = false
		for id := range ids {
			r.kept[id] = struct{}{}
		}
		r.regsMu.Unlock()
	}
	return nil
}

func (r *Run) readRegistration(ctx context.Context, key string, into IDs) error {
	rc, info, err := r.g.store.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read commit registration %s: %w", key, err)
	}
	defer rc.Close()
	if info.Size > 32<<26 {
		return fmt.Errorf("commit registration %s: %d bytes is more than any commit registers", key, info.Size)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("read commit registration %s: %w", key, err)
	}
	if err := decodeIDs(b, into); err != nil {
		return fmt.Errorf("commit registration %s: %w", key, err)
	}
	return nil
}

// End finishes the run: it removes the registrations of commits that had
// published before it began, and expired ones, marks the store idle and
// releases the lock. Failures are logged: a lock left held is taken over
// once stale.
func (r *Run) End(ctx context.Context) {
	r.stopBeat()
	<-r.beatDone
	g := r.g
	var keys []string
	for _, name := range r.published {
		keys = append(keys, pendingPrefix+name, publishedPrefix+name)
	}
	r.regsMu.Lock()
	for key, expired := range r.regs {
		if expired {
			keys = append(keys, key, publishedPrefix+strings.TrimPrefix(key, pendingPrefix))
		}
	}
	r.regsMu.Unlock()
	if err := storage.DeleteBatch(ctx, g.store, keys); err != nil {
		g.log.Warn("could not remove finished commit registrations; the next run tries again", "err", err)
	}
	if err := r.fenced(ctx); err != nil {
		g.log.Warn("garbage collection run ends without marking the store idle", "err", err)
		return
	}
	if err := g.write(ctx, State{Gen: r.gen, Phase: Idle, Run: r.id, Holder: g.replica}); err != nil {
		g.log.Warn("could not mark garbage collection idle", "err", err)
	}
	if err := g.store.Put(ctx, lockKey(r.lock), bytes.NewReader(nil), 0, r.lockMeta("released")); err != nil {
		g.log.Warn("could not release the garbage collection lock; it is taken over once stale", "lock", lockKey(r.lock), "err", err)
	}
}
