package pbs

import (
	"testing"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// OnStartedStoring calls f whenever a blob upload was counted as under
// way, until the test ends.
func OnStartedStoring(t *testing.T, f func()) {
	startedStoring = f
	t.Cleanup(func() { startedStoring = nil })
}

// FileBudget is s's budget of whole files in memory.
func FileBudget(s *Server) *budget.Budget { return s.fileBudget() }

// IndexCost is the share of the file budget a stored index of size bytes
// takes.
var IndexCost = indexCost

// OnFileBudget sets, until the test ends, what is called when a request
// has to wait for the file budget (waits), when that wait ends (waited)
// and once it holds its share (held); nil ones are not called.
func OnFileBudget(t *testing.T, waits func(), waited func(error), held func()) {
	fileWaits, fileWaited, fileHeld = waits, waited, held
	t.Cleanup(func() { fileWaits, fileWaited, fileHeld = nil, nil, nil })
}
