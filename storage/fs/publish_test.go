package fs

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A put of a key that another put is still publishing must not be told
// "already stored" while that publication can still be taken back: when the
// first put's sync fails and it removes the name, the second put must fail
// or store the object itself, never succeed with the key gone.
func TestPutIfAbsentDuringFailedPublish(t *testing.T) {
	for _, tmpfile := range []bool{true, false} {
		name := "tmpfile"
		if !tmpfile {
			name = "named"
		}
		t.Run(name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.dir.Close()
			if !tmpfile {
				s.tmpfile = false
			}
			boom := errors.New("injected writeback error")
			var calls atomic.Int64
			entered := make(chan struct{})
			release := make(chan struct{})
			// Sync 1 makes put A's data durable; sync 2 is A's publish
			// sync, which blocks until released and then fails.
			s.sync.syncfs = func(int) error {
				if calls.Add(1) == 2 {
					close(entered)
					<-release
					return boom
				}
				return nil
			}
			const key = "ab/cd/chunk"
			data := []byte("payload")
			ctx := context.Background()
			errA := make(chan error, 1)
			go func() {
				_, err := s.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(len(data)), nil)
				errA <- err
			}()
			<-entered // A has linked the name and waits in its publish sync
			type result struct {
				created bool
				err     error
			}
			resB := make(chan result, 1)
			var bWaits atomic.Bool
			s.inflight.onWait = func(k string) { bWaits.Store(k == key) }
			go func() {
				created, err := s.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(len(data)), nil)
				resB <- result{created, err}
			}()
			// Let B reach the point where it waits: for the put in flight
			// (fixed) or for a sync (the bug).
			deadline := time.Now().Add(10 * time.Second)
			for s.sync.waiting() < 2 && !bWaits.Load() {
				if time.Now().After(deadline) {
					t.Fatal("second put never waited")
				}
				time.Sleep(time.Millisecond)
			}
			close(release)
			if err := <-errA; !errors.Is(err, boom) {
				t.Fatalf("put A = %v, want the injected sync failure", err)
			}
			b := <-resB
			if b.err != nil {
				return // failing is an honest answer
			}
			if _, err := s.Stat(ctx, key); err != nil {
				t.Fatalf("put B = (created %v, nil), but the key is gone: %v", b.created, err)
			}
		})
	}
}
