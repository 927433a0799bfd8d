package chunk

import "context"

// PollRemovals is one look of WatchRemovals at the removal marker, for
// tests that must not wait for a ticker.
func (s *Service) PollRemovals(ctx context.Context, last string) string {
	return s.pollRemovals(ctx, last)
}
