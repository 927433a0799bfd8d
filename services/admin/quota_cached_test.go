package admin_test

import (
	"errors"
	"testing"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// The quota book's recount of stored bytes must be a count that started
// after the bytes it forgets were added: a statistics count cached from
// before (chunkbridge stats, a Prometheus scrape; StatsTTL) must not reset
// a tenant's usage, or a tenant over its stored-bytes quota stores new
// chunks again at every recount.
func TestStoredQuotaSurvivesCachedStatistics(t *testing.T) {
	book := quota.New(func(tenant string) (int64, int64) {
		if tenant == "globex" {
			return 0, 1 // the first chunk uses it up
		}
		return 0, 0
	}, 20*time.Millisecond)
	e := newEnvQuota(t, memory.New(), admin.Config{StatsTTL: time.Hour}, gcguard.Config{}, book)
	ctx := t.Context()
	// A statistics count before globex stores anything.
	if _, err := e.adm.GetStats(ctx, &chunkbridgev1.GetStatsRequest{}); err != nil {
		t.Fatal(err)
	}
	blobs := makeBlobs(41, 60, 1024, sha256Alg)
	put := func(i int) (bool, error) {
		b := blobs[i]
		return e.chunks.Put(as(ctx, globex), chunk.Upload{ID: b.id, Algorithm: b.alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: b.data})
	}
	if created, err := put(0); err != nil || !created {
		t.Fatalf("globex's first chunk: %v, %v", created, err)
	}
	for i := 1; i < len(blobs); i++ {
		created, err := put(i)
		if created {
			t.Fatalf("globex stored chunk %d of %d after its stored-bytes quota was used up (a recount reused a statistics count from before its uploads)", i, len(blobs))
		}
		if !errors.Is(err, apierr.ErrQuota) {
			t.Fatalf("chunk %d over the quota: %v; want a quota refusal", i, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
