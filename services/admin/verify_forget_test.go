package admin_test

import (
	"testing"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// A chunk verify finds missing is forgotten by the presence cache: a
// client's next backup (FindMissing) and verify --repair-from upload it
// again instead of being told it is stored.
func TestVerifyForgetsMissingChunks(t *testing.T) {
	for _, p := range []struct {
		name string
		dom  string
	}{{"default domain", "default"}, {"domain globex", "globex"}} {
		t.Run(p.name, func(t *testing.T) {
			e := newEnv(t, memory.New(), admin.Config{})
			ctx := t.Context()
			who := globex
			if p.dom == "default" {
				who.Tenant, who.Domain = "default", "default"
			}
			blobs := makeBlobs(71, 2, 1024, sha256Alg)
			e.uploadAs(t, who, blobs)
			e.mustPutIndexAs(t, who, "a.caibx", blobs)
			if err := e.chunks.DomainStore(p.dom).Delete(ctx, blobs[0].id.Key()); err != nil { // lost behind the service's back
				t.Fatal(err)
			}
			if vr, _ := e.verify(t, &chunkbridgev1.VerifyRequest{}); vr.Missing != 1 {
				t.Fatalf("verify: %v; want 1 missing", vr)
			}
			missing, err := e.chunks.FindMissing(as(ctx, who), ids(blobs))
			if err != nil || len(missing) != 1 || missing[0] != blobs[0].id {
				t.Fatalf("FindMissing after verify found a chunk missing: %v, %v; want that chunk", missing, err)
			}
		})
	}
}
