// Package gcguard keeps garbage collection from deleting a chunk that a
// commit is about to reference, in this process or in any other process
// that shares the store (chunk-service replicas on one bucket). The
// processes coordinate only through small objects in the store under gc/;
// docs/gc.md has the design and the argument for why no published index
// or snapshot file can reference a deleted chunk.
//
// In short:
//
//   - One GC runs at a time, holding a lock object (gc/lock/<n>, created
//     with PutIfAbsent, renewed by a heartbeat, taken over by creating
//     <n+1> once stale). A holder that could not renew stops deleting
//     (fencing) well before anyone may take the lock over.
//   - A GC deletes in batches. Each batch first writes gc/state with a new
//     generation and phase "deleting", then lists the commit registrations,
//     spares their chunks, deletes, and writes phase "running".
//   - A commit registers the chunks it references (gc/pending/<id>), then
//     reads gc/state: it waits while a batch is deleting, and re-checks its
//     chunks in storage when the generation moved since its ticket (taken
//     before it checked them). Either the batch listed the registration,
//     or the commit read the state after the batch announced itself: one
//     of the two always sees the other.
//   - Every process watches gc/state and empties its presence cache when a
//     batch starts or ends, so "already stored" is never answered from an
//     entry a deletion may have made false.
package gcguard

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Keys in the store. Nothing else lives under gc/.
const (
	stateKey        = "gc/state"
	pendingPrefix   = "gc/pending/"
	publishedPrefix = "gc/published/"
	lockPrefix      = "gc/lock/"
	clockPrefix     = "gc/clock/"
)

// ErrRunning: a garbage collection is already running, here or on another
// replica.
var ErrRunning = errors.New("a garbage collection is already running")

// IDs is a set of chunk ids.
type IDs = map[chunk.ID]struct{}

// Phase is where garbage collection is.
type Phase string

// The phases of gc/state.
const (
	Idle     Phase = "idle"     // no run
	Running  Phase = "running"  // a run marks or lists; nothing is being deleted
	Deleting Phase = "deleting" // a delete batch may be deleting
)

// State is the content of gc/state, written only by the lock holder.
type State struct {
	// Gen counts delete batches ever begun on the store.
	Gen    uint64 `json:"gen"`
	Phase  Phase  `json:"phase"`
	Run    string `json:"run,omitempty"`
	Holder string `json:"holder,omitempty"`
}

// batch is what a presence cache entry depends on: which delete batches
// have begun, and whether the last one is still deleting. Running and idle
// are alike.
func (s State) batch() (uint64, bool) { return s.Gen, s.Phase == Deleting }

// Config tunes a Guard. Zero durations take the defaults.
type Config struct {
	// Replica names this process in registrations and the lock (default:
	// host name and a random suffix).
	Replica string
	// OnChange is called when a delete batch starts or ends anywhere, before
	// the new state is used for tickets: the chunk service empties its
	// presence cache there.
	OnChange func()
	// BatchTimeout bounds one delete batch, from announcing it to its last
	// delete request (default 30s); a request already sent may finish up
	// to the store's grace later (s3: 10s), which must stay under
	// BatchTimeout/2 and LockTTL/8. A commit that sees a batch deleting
	// for 1.5 × BatchTimeout takes its GC for dead and re-checks.
	BatchTimeout time.Duration
	// LockTTL is how long the GC lock lives without a heartbeat before
	// another replica may take it over (default 2m).
	LockTTL time.Duration
	// RegistrationTTL is how long a commit may take from registering to
	// publishing (it gets half of it); older registrations are left by
	// crashed processes and garbage collection removes them (default 1h).
	RegistrationTTL time.Duration
	Log             *slog.Logger
	Hooks           Hooks
}

// Hooks let tests act at fixed points; nil hooks are skipped.
type Hooks struct {
	// Waiting: a commit read a deleting state and is about to wait.
	Waiting func(State)
	// Renewed: a heartbeat tried to renew the GC lock.
	Renewed func(error)
}

// Guard is one process's side of the protocol, shared by its catalog and
// its GC. Call New.
type Guard struct {
	store   storage.Store
	cfg     Config
	replica string
	log     *slog.Logger

	mu      sync.Mutex
	known   State
	changed chan struct{} // closed and replaced when known moves
}

// New returns the guard of one process on store.
func New(store storage.Store, cfg Config) *Guard {
	if cfg.BatchTimeout <= 0 {
		cfg.BatchTimeout = 30 * time.Second
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = 2 * time.Minute
	}
	if cfg.RegistrationTTL <= 0 {
		cfg.RegistrationTTL = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	replica := cfg.Replica
	if replica == "" {
		host, _ := os.Hostname()
		replica = sanitize(host) + "-" + randomHex(4)
	}
	return &Guard{store: store, cfg: cfg, replica: replica, log: cfg.Log, known: State{Phase: Idle}, changed: make(chan struct{})}
}

// sanitize keeps a name usable inside a key.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
	if s == "" {
		return "replica"
	}
	return s[:min(len(s), 64)]
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Replica is the name this process uses in the store.
func (g *Guard) Replica() string { return g.replica }

// Known is the last state this process read or wrote.
func (g *Guard) Known() State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.known
}

// observe records a state read or written. When its batch differs from
// the known one, OnChange runs before the new state is visible to Ticket:
// a ticket of the new batch never meets a cache entry from before it. Any
// difference counts, a lower generation too (gc/state removed by hand, or
// an older read finishing after a newer one): emptying the cache and
// re-checking at the next commit are always safe.
func (g *Guard) observe(st State) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gen, deleting := st.batch()
	kgen, kdeleting := g.known.batch()
	if gen == kgen && deleting == kdeleting {
		g.known.Phase = st.Phase // running and idle are alike
		return
	}
	if g.cfg.OnChange != nil {
		g.cfg.OnChange()
	}
	g.known = st
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *Guard) waitChan() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.changed
}

// read reads gc/state from the store and observes it.
func (g *Guard) read(ctx context.Context) (State, error) {
	rc, _, err := g.store.Get(ctx, stateKey)
	if errors.Is(err, storage.ErrNotFound) {
		st := State{Phase: Idle}
		g.observe(st)
		return st, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("read the garbage collection state %s: %w", stateKey, err)
	}
	defer rc.Close()
	var st State
	if err := json.NewDecoder(io.LimitReader(rc, 4096)).Decode(&st); err != nil {
		return State{}, fmt.Errorf("read the garbage collection state %s: %w", stateKey, err)
	}
	g.observe(st)
	return st, nil
}

func (g *Guard) write(ctx context.Context, st State) error {
	b, _ := json.Marshal(st)
	if err := g.store.Put(ctx, stateKey, bytes.NewReader(b), int64(len(b)), nil); err != nil {
		return fmt.Errorf("write the garbage collection state %s: %w", stateKey, err)
	}
	g.observe(st)
	return nil
}

// State reads gc/state from the store: which run, on which replica, is
// where. A run that died leaves its last phase until the next run.
func (g *Guard) State(ctx context.Context) (State, error) { return g.read(ctx) }

// Watch reads gc/state every interval until ctx ends, so that this
// process's presence cache follows delete batches run anywhere.
func (g *Guard) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		before := g.Known()
		st, err := g.read(ctx)
		switch {
		case err == nil && (st.Gen != before.Gen || (st.Phase == Deleting) != (before.Phase == Deleting)):
			g.log.Debug("garbage collection state moved: presence cache emptied", "gen", st.Gen, "phase", st.Phase, "run", st.Run, "holder", st.Holder)
		case err != nil && ctx.Err() == nil:
			g.log.Debug("garbage collection state unreadable", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Ticket marks the moment a commit started to check its chunks.
type Ticket struct {
	gen uint64
	ok  bool // false: taken while a batch was deleting
}

// Ticket is taken before a commit checks that its chunks exist (through
// the presence cache or storage).
func (g *Guard) Ticket() Ticket {
	k := g.Known()
	return Ticket{gen: k.Gen, ok: k.Phase != Deleting}
}

// Commit is a registered commit.
type Commit struct {
	g          *Guard
	key        string
	registered time.Time
}

// Commit registers the ids a commit references, after the commit checked
// that they exist (with ticket t taken before the check), and before it
// publishes. It waits while a delete batch is deleting. recheck is true
// when a batch may have deleted since t: the caller must then confirm from
// storage (not a cache) that every id still exists, and refuse to publish
// if not. The caller publishes within PublishContext and calls Done.
func (g *Guard) Commit(ctx context.Context, t Ticket, ids IDs) (c *Commit, recheck bool, err error) {
	c = &Commit{g: g, key: pendingPrefix + g.replica + "-" + randomHex(8)}
	body := encodeIDs(ids)
	c.registered = time.Now()
	if err := g.store.Put(ctx, c.key, bytes.NewReader(body), int64(len(body)), storage.Metadata{"replica": g.replica}); err != nil {
		return nil, false, fmt.Errorf("register %d chunks with garbage collection at %s: %w", len(ids), c.key, err)
	}
	st, stale, err := g.settled(ctx)
	if err != nil {
		c.Done(context.WithoutCancel(ctx), false)
		return nil, false, err
	}
	return c, !t.ok || stale || st.Gen != t.gen, nil
}

// settled reads the state until no batch is deleting. A batch seen
// deleting for longer than BatchTimeout (and a margin) belongs to a GC
// that died or was fenced: stale is then true and the caller re-checks.
func (g *Guard) settled(ctx context.Context) (st State, stale bool, err error) {
	var first time.Time
	var seen State
	backoff := 20 * time.Millisecond
	for {
		ch := g.waitChan()
		st, err = g.read(ctx)
		if err != nil || st.Phase != Deleting {
			return st, false, err
		}
		if first.IsZero() || st != seen {
			first, seen = time.Now(), st
		}
		// A batch's deletes end by its timeout plus the store's grace
		// for a request already sent (the s3 store's is 10s), which
		// BatchTimeout/2 covers.
		if time.Since(first) > g.cfg.BatchTimeout+g.cfg.BatchTimeout/2 {
			g.log.Warn("a garbage collection delete batch never ended; its run is taken for dead and the commit re-checks its chunks",
				"run", st.Run, "holder", st.Holder, "gen", st.Gen)
			return st, true, nil
		}
		if h := g.cfg.Hooks.Waiting; h != nil {
			h(st)
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return st, false, ctx.Err()
		case <-ch: // a batch in this process ended
		case <-timer.C: // one on another replica may have
		}
		timer.Stop()
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// PublishContext bounds the publish: a commit that would publish later
// than half the registration's lifetime after registering does not, since
// garbage collection may by then have dropped the registration as left by
// a crashed process.
func (c *Commit) PublishContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithDeadline(ctx, c.registered.Add(c.g.cfg.RegistrationTTL/2))
}

// Done ends the registration once the file is published (published) or
// the commit abandoned. A published commit's registration stays, marked
// published, while a GC run is active: the run may have listed the
// published files before this one appeared, and the next run removes it.
func (c *Commit) Done(ctx context.Context, published bool) {
	if c == nil {
		return
	}
	g := c.g
	if published {
		st, err := g.read(ctx)
		if err != nil || st.Phase != Idle {
			marker := publishedPrefix + strings.TrimPrefix(c.key, pendingPrefix)
			if err := g.store.Put(ctx, marker, bytes.NewReader(nil), 0, nil); err != nil {
				g.log.Warn("could not mark a commit's garbage collection registration published; it protects its chunks until it expires",
					"registration", c.key, "err", err)
			}
			return
		}
	}
	if err := g.store.Delete(ctx, c.key); err != nil {
		g.log.Warn("could not remove a commit's garbage collection registration; it protects its chunks until it expires",
			"registration", c.key, "err", err)
	}
}

func encodeIDs(ids IDs) []byte {
	sorted := make([]chunk.ID, 0, len(ids))
	for id := range ids {
		sorted = append(sorted, id)
	}
	slices.SortFunc(sorted, func(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) })
	out := make([]byte, 0, 32*len(sorted))
	for _, id := range sorted {
		out = append(out, id[:]...)
	}
	return out
}

func decodeIDs(b []byte, into IDs) error {
	if len(b)%32 != 0 {
		return fmt.Errorf("%d bytes is not a whole number of 32-byte chunk ids", len(b))
	}
	for i := 0; i < len(b); i += 32 {
		into[chunk.ID(b[i:i+32])] = struct{}{}
	}
	return nil
}

// storeNow reads the time on the store's clock, the clock every object's
// modification time comes from: it writes a small object and reads its
// time back from a listing (the same source and precision as the chunks').
func (g *Guard) storeNow(ctx context.Context) (time.Time, error) {
	key := clockPrefix + g.replica
	stamp := []byte(time.Now().UTC().Format(time.RFC3339Nano))
	if err := g.store.Put(ctx, key, bytes.NewReader(stamp), int64(len(stamp)), nil); err != nil {
		return time.Time{}, fmt.Errorf("read the store's clock: write %s: %w", key, err)
	}
	var t time.Time
	err := g.store.List(ctx, key, func(i storage.Info) error {
		if i.Key == key {
			t = i.Modified
		}
		return nil
	})
	if err == nil && t.IsZero() {
		err = fmt.Errorf("%s is not listed after it was written", key)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read the store's clock: %w", err)
	}
	return t, nil
}

func lockKey(n uint64) string { return fmt.Sprintf("%s%020d", lockPrefix, n) }

func parseLockKey(key string) (uint64, bool) {
	n, err := strconv.ParseUint(strings.TrimPrefix(key, lockPrefix), 10, 64)
	return n, err == nil && strings.HasPrefix(key, lockPrefix)
}
