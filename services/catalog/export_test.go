package catalog

import (
	"testing"

	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// BlobSpools is s's count of blob files being spooled.
func BlobSpools(s *Server) *budget.Budget { return s.blobSpools }

// OnBlobSpool sets, until the test ends, what is called when a blob
// upload has to wait for a spool (waits), when that wait ends (waited) and
// once it holds one (held); nil ones are not called.
func OnBlobSpool(t *testing.T, waits func(), waited func(error), held func()) {
	blobSpoolWaits, blobSpoolWaited, blobSpoolHeld = waits, waited, held
	t.Cleanup(func() { blobSpoolWaits, blobSpoolWaited, blobSpoolHeld = nil, nil, nil })
}
