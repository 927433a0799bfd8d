package budget

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The shared budget serves waiters in order, lets a bounded overdraw
// through, and gives a cancelled waiter's place to the next.
func TestBudgetFIFOOverdrawAndCancel(t *testing.T) {
	b := New(10)
	if !b.TryAcquire(8) {
		t.Fatal("8 of 10 not free")
	}
	ctx, cancel := context.WithCancel(t.Context())
	big := make(chan error, 1)
	go func() { big <- b.Acquire(ctx, 5) }()
	for !b.Pressed() {
		time.Sleep(time.Millisecond)
	}
	if b.TryAcquire(1) {
		t.Fatal("TryAcquire jumped the queue")
	}
	small := make(chan error, 1)
	go func() { small <- b.Acquire(t.Context(), 2) }()
	cancel() // the big one gives up: the small one fits behind it
	if err := <-big; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire = %v", err)
	}
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	b.Overdraw(3)
	if got := b.InUse(); got != 13 {
		t.Fatalf("InUse = %d after an overdraw, want 13", got)
	}
	b.Release(3)
	b.Release(2)
	b.Release(8)
	if got := b.InUse(); got != 0 {
		t.Fatalf("InUse = %d after releasing everything", got)
	}
}

func TestBudgetClampsAndCounts(t *testing.T) {
	b := New(100)
	if !b.TryAcquire(60) || b.TryAcquire(50) || b.InUse() != 60 {
		t.Fatalf("in use %d after 60 of 100", b.InUse())
	}
	b.Release(60)
	// Larger than the budget: takes all of it rather than never.
	if err := b.Acquire(t.Context(), 1000); err != nil || b.InUse() != 100 {
		t.Fatalf("Acquire(1000) = %v, in use %d", err, b.InUse())
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := b.Acquire(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire on a full budget with an ended context = %v", err)
	}
	b.Release(1000)
	if b.InUse() != 0 {
		t.Fatalf("in use %d after release", b.InUse())
	}
}
