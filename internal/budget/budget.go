// Package budget is a weighted semaphore of bytes shared by the holders
// of a bounded resource, which it can ask to give their part back sooner.
package budget

import (
	"container/list"
	"context"
	"fmt"
	"sync"
)

// Budget is a weighted semaphore of bytes (or any unit): for one
// connection's bounded resources (bytes queued for the writer, download
// bytes in flight) or, shared by every gateway session or chunk stream of
// a process, for the chunk data all of them buffer for their peers. A request larger than the whole budget is clamped to it, so it
// waits for everything else to be released instead of forever. Waiters
// are served first come, first served.
type Budget struct {
	size int64

	mu      sync.Mutex
	used    int64
	peak    int64     // the most used at once, for tests and metrics
	waiters list.List // of *waiter, oldest first
	// holders are those holding units of a shared budget: when a request
	// has to wait, each is squeezed.
	holders map[Holder]struct{}
}

// A Holder holds units of a shared budget and gives them back once its
// peer has read them. Squeeze is called (without the budget's lock) when a
// request has to wait: a holder whose peer reads nothing should then give
// up sooner than it otherwise would.
type Holder interface{ Squeeze() }

type waiter struct {
	n     int64
	ready chan struct{}
}

// New returns a budget of size units; size must be positive.
func New(size int64) *Budget {
	if size <= 0 {
		panic(fmt.Sprintf("budget.New(%d): size must be positive", size))
	}
	return &Budget{size: size}
}

// Clamp is what a request of n takes: at most the whole budget.
func (b *Budget) Clamp(n int64) int64 { return max(0, min(n, b.size)) }

// Acquire takes n units, waiting until they are free or ctx ends.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	n = b.Clamp(n)
	b.mu.Lock()
	if b.used+n <= b.size && b.waiters.Len() == 0 {
		b.take(n)
		b.mu.Unlock()
		return nil
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	holders := b.holderList()
	b.mu.Unlock()
	for _, s := range holders {
		s.Squeeze()
	}
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready: // granted meanwhile: give it back
			b.mu.Unlock()
			b.Release(n)
		default:
			b.waiters.Remove(e)
			b.grant() // a large waiter at the front may have blocked others
			b.mu.Unlock()
		}
		return ctx.Err()
	}
}

// TryAcquire takes n units if they are free now.
func (b *Budget) TryAcquire(n int64) bool {
	n = b.Clamp(n)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.size || b.waiters.Len() > 0 {
		return false
	}
	b.take(n)
	return true
}

// Overdraw takes n units at once, even beyond the budget: for bounded
// amounts a holder learns it needs only once it has them (a chunk larger
// than its estimate). Release them as usual.
func (b *Budget) Overdraw(n int64) {
	n = b.Clamp(n)
	b.mu.Lock()
	b.take(n)
	b.mu.Unlock()
}

// take adds n to what is used. Called with b.mu held.
func (b *Budget) take(n int64) {
	b.used += n
	b.peak = max(b.peak, b.used)
}

// Release returns n units taken by Acquire, TryAcquire or Overdraw with
// the same n.
func (b *Budget) Release(n int64) {
	n = b.Clamp(n)
	b.mu.Lock()
	b.used = max(0, b.used-n) // clamped amounts may not add up exactly
	b.grant()
	b.mu.Unlock()
}

// grant wakes waiters in order while they fit. Called with b.mu held.
func (b *Budget) grant() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*waiter)
		if b.used+w.n > b.size {
			return
		}
		b.take(w.n)
		b.waiters.Remove(e)
		close(w.ready)
	}
}

// Size is the whole budget.
func (b *Budget) Size() int64 { return b.size }

// InUse is how much is taken now (more than Size while overdrawn).
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Peak is the most that was taken at once since the budget was made.
func (b *Budget) Peak() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// Pressed reports whether a request waits.
func (b *Budget) Pressed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waiters.Len() > 0
}

func (b *Budget) holderList() []Holder {
	out := make([]Holder, 0, len(b.holders))
	for s := range b.holders {
		out = append(out, s)
	}
	return out
}

// SetHolder registers h as holding units (holds) or no longer (!holds).
func (b *Budget) SetHolder(h Holder, holds bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !holds {
		delete(b.holders, h)
		return
	}
	if b.holders == nil {
		b.holders = map[Holder]struct{}{}
	}
	b.holders[h] = struct{}{}
}
