package quota

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Reservations in flight count: two commits that fit only one at a time
// cannot both pass, and a refused or failed commit gives its bytes back.
func TestReserveLogical(t *testing.T) {
	ctx := context.Background()
	counts := 0
	count := func(context.Context) (int64, error) { counts++; return 600, nil }
	b := New(func(tenant string) (int64, int64) {
		if tenant == "a" {
			return 1000, 0
		}
		return 0, 0
	}, time.Hour)
	done1, err := b.ReserveLogical(ctx, "a", 300, count)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReserveLogical(ctx, "a", 300, count); !errors.Is(err, apierr.ErrQuota) {
		t.Fatalf("a second reservation while the first is in flight: %v; want a quota refusal", err)
	}
	done1(false) // not published: the bytes come back
	done2, err := b.ReserveLogical(ctx, "a", 400, count)
	if err != nil {
		t.Fatalf("after a failed commit: %v", err)
	}
	done2(true)
	if _, err := b.ReserveLogical(ctx, "a", 1, count); !errors.Is(err, apierr.ErrQuota) {
		t.Fatalf("a published commit's bytes were not counted: %v", err)
	}
	if counts != 1 {
		t.Fatalf("counted %d times within the TTL, want once", counts)
	}
	// Another tenant has no quota and is never counted.
	if done, err := b.ReserveLogical(ctx, "b", 1<<40, count); err != nil || counts != 1 {
		t.Fatalf("a tenant without quota: %v (counts %d)", err, counts)
	} else {
		done(true)
	}
}

// A count replaces what this process added before it started.
func TestCountReplacesAdditions(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	stored := int64(0)
	b := New(func(string) (int64, int64) { return 0, 100 }, time.Minute)
	b.now = func() time.Time { return now }
	b.SetStoredCounter(func(context.Context) (map[string]int64, error) { return map[string]int64{"a": stored}, nil })
	if err := b.CheckStored(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	b.AddStored("a", 99)
	if err := b.CheckStored(ctx, "a"); err != nil {
		t.Fatalf("99 of 100: %v", err)
	}
	b.AddStored("a", 1)
	if err := b.CheckStored(ctx, "a"); !errors.Is(err, apierr.ErrQuota) {
		t.Fatalf("100 of 100: %v; want refused", err)
	}
	// GC deleted most of it; the next count (after the TTL) says so.
	stored, now = 10, now.Add(2*time.Minute)
	b.CheckStored(ctx, "a") // starts the count in the background
	b.mu.Lock()
	wait := b.stored.counting
	b.mu.Unlock()
	if wait != nil {
		<-wait
	}
	if err := b.CheckStored(ctx, "a"); err != nil {
		t.Fatalf("after a count of 10 bytes: %v", err)
	}
}
