package fs

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// Writers that call Sync while a sync runs share the next one, and none
// returns on a sync that started before its call.
func TestSyncerGroupsWaiters(t *testing.T) {
	s := newSyncer(0)
	var calls atomic.Int64
	entered := make(chan struct{})
	release := make(chan struct{})
	s.syncfs = func(int) error {
		calls.Add(1)
		entered <- struct{}{}
		<-release
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- s.Sync() }()
	<-entered // sync 1 is running

	const waiters = 10
	var wg sync.WaitGroup
	var returned atomic.Int64
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Sync(); err != nil {
				t.Error(err)
			}
			returned.Add(1)
		}()
	}
	// Let every waiter queue up behind sync 1. They must not return when
	// sync 1 ends: it started before their calls.
	for s.waiting() < waiters+1 { // the first caller is inside too
		runtime.Gosched()
	}
	release <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	<-entered // sync 2 started, for all waiters together
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d writers returned on a sync that started before their call", n)
	}
	release <- struct{}{}
	wg.Wait()
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d syncs for 1 + %d writers, want 2", n, waiters)
	}
}

// A failed sync is reported to the caller it covered; a caller covered by a
// later, good sync is not blamed for it.
func TestSyncerReportsFailure(t *testing.T) {
	s := newSyncer(0)
	boom := errors.New("writeback error")
	var n atomic.Int64
	entered := make(chan struct{})
	release := make(chan struct{})
	s.syncfs = func(int) error {
		switch n.Add(1) {
		case 1:
			entered <- struct{}{}
			<-release
			return boom
		default:
			return nil
		}
	}
	first := make(chan error, 1)
	go func() { first <- s.Sync() }()
	<-entered
	release <- struct{}{}
	if err := <-first; !errors.Is(err, boom) {
		t.Fatalf("Sync covered by a failed sync = %v, want the failure", err)
	}
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync after the failure, covered by a good sync = %v, want nil", err)
	}
}
