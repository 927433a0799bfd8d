package session

import (
	"context"
	"fmt"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Budget is a weighted semaphore of bytes (or any unit) for one
// connection's bounded resources: bytes queued for the writer, download
// bytes in flight. A request larger than the whole budget is clamped to it,
// so it waits for everything else to be released instead of forever.
type Budget struct {
	size  int64
	sem   *semaphore.Weighted
	inUse atomic.Int64
}

// NewBudget returns a budget of size units; size must be positive.
func NewBudget(size int64) *Budget {
	if size <= 0 {
		panic(fmt.Sprintf("session.NewBudget(%d): size must be positive", size))
	}
	return &Budget{size: size, sem: semaphore.NewWeighted(size)}
}

func (b *Budget) clamp(n int64) int64 { return max(0, min(n, b.size)) }

// Acquire takes n units, waiting until they are free or ctx ends.
func (b *Budget) Acquire(ctx context.Context, n int64) error {
	n = b.clamp(n)
	if err := b.sem.Acquire(ctx, n); err != nil {
		return err
	}
	b.inUse.Add(n)
	return nil
}

// TryAcquire takes n units if they are free now.
func (b *Budget) TryAcquire(n int64) bool {
	n = b.clamp(n)
	if !b.sem.TryAcquire(n) {
		return false
	}
	b.inUse.Add(n)
	return true
}

// Release returns n units taken by Acquire or TryAcquire with the same n.
func (b *Budget) Release(n int64) {
	n = b.clamp(n)
	b.inUse.Add(-n)
	b.sem.Release(n)
}

// Size is the whole budget.
func (b *Budget) Size() int64 { return b.size }

// InUse is how much is taken now.
func (b *Budget) InUse() int64 { return b.inUse.Load() }
