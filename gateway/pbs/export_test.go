package pbs

import "testing"

// OnStartedStoring calls f whenever a blob upload was counted as under
// way, until the test ends.
func OnStartedStoring(t *testing.T, f func()) {
	startedStoring = f
	t.Cleanup(func() { startedStoring = nil })
}
