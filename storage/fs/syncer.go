package fs

import (
	"sync"

	"golang.org/x/sys/unix"
)

// syncer is group commit for the store's file system: a writer calls Sync
// after its writes, and returns once a syncfs(2) that started after that
// call has completed. Writers arriving while one syncfs runs share the next
// one, so N concurrent puts cost about two syncs instead of 2N fsyncs.
type syncer struct {
	fd     int             // any descriptor on the file system
	syncfs func(int) error // unix.Syncfs; replaced in tests

	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // syncs started
	done    uint64 // the newest completed sync
	running bool
	failed  uint64 // the newest sync that failed (0: none)
	err     error  // its error
	waiters int    // callers inside Sync, for tests
}

func newSyncer(fd int) *syncer {
	s := &syncer{fd: fd, syncfs: unix.Syncfs}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Sync makes every write completed before the call durable.
func (s *syncer) Sync() error {
	s.mu.Lock()
	s.waiters++
	defer func() { s.waiters--; s.mu.Unlock() }()
	// A sync already running may have started before our writes: only the
	// next one to start is sure to cover them.
	need := s.started + 1
	for s.done < need {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		err := s.syncfs(s.fd)
		s.mu.Lock()
		s.running = false
		s.done = n
		if err != nil {
			s.failed, s.err = n, err
		}
		s.cond.Broadcast()
	}
	// A failure in any sync from the one we needed on may have lost our
	// writes: syncfs reports a writeback error only once, so a later
	// success does not clear it for us.
	if s.failed >= need {
		return s.err
	}
	return nil
}

// waiting reports how many callers are inside Sync.
func (s *syncer) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters
}
