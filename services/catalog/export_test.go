package catalog

import (
	"testing"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// BlobSpools is s's count of blob files being spooled.
func BlobSpools(s *Server) *budget.Budget { return s.blobSpools }

// IndexSpools is s's count of indexes being spooled.
func IndexSpools(s *Server) *budget.Budget { return s.indexSpools }

// OnSpool sets, until the test ends, what is called when an upload has to
// wait for a spool (waits), when that wait ends (waited) and once it holds
// one (held); nil ones are not called.
func OnSpool(t *testing.T, waits func(), waited func(error), held func()) {
	spoolWaits, spoolWaited, spoolHeld = waits, waited, held
	t.Cleanup(func() { spoolWaits, spoolWaited, spoolHeld = nil, nil, nil })
}
