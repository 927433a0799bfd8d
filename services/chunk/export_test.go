package chunk

import "context"

// PollRemovals is one look of WatchRemovals at the removal marker, for
// tests that must not wait for a ticker.
func (s *Service) PollRemovals(ctx context.Context, last string) string {
	return s.pollRemovals(ctx, last)
}

// OnWaitRebuild sets the hook run when a read starts waiting for another
// read's rebuild of a tenant's references; nil removes it.
func OnWaitRebuild(f func()) { testHookWaitRebuild = f }
