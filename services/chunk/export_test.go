package chunk

import (
	"context"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// PollRemovals is one look of WatchRemovals at the removal marker, for
// tests that must not wait for a ticker.
func (s *Service) PollRemovals(ctx context.Context, last string) string {
	return s.pollRemovals(ctx, last)
}

// OnWaitRebuild sets the hook run when a read starts waiting for another
// read's rebuild of a tenant's references; nil removes it.
func OnWaitRebuild(f func()) { testHookWaitRebuild = f }

// StreamBudget is the budget the server's streams share.
func (s *Server) StreamBudget() *budget.Budget { return s.budget }

// OnStall sets the hook told of each stream the watch ends.
func (s *Server) OnStall(f func(stream string)) { s.onStall = f }

// WaitSenders waits for the streams' sending goroutines to end, so that
// everything they held is released.
func (s *Server) WaitSenders() { s.senders.Wait() }
