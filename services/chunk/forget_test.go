package chunk_test

import (
	"context"
	"crypto/sha256"
	"testing"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// gatedStat holds Stat calls until released, after telling that one began.
type gatedStat struct {
	storage.Store
	began   chan struct{}
	release chan struct{}
}

func (g *gatedStat) Stat(ctx context.Context, key string) (storage.Info, error) {
	info, err := g.Store.Stat(ctx, key)
	g.began <- struct{}{}
	<-g.release
	return info, err
}

// An existence answer that storage gave before a chunk was deleted and
// forgotten (garbage collection) must not land in the presence cache after
// the Forget: the next check has to see that the chunk is gone.
func TestForgetWinsOverAnAnswerInFlight(t *testing.T) {
	mem := memory.New()
	data := []byte("collected while someone asked")
	id := chunk.ID(sha256.Sum256(data))
	plain, _ := chunk.New(mem, chunk.Config{}, nil)
	if _, err := plain.Put(t.Context(), chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	gated := &gatedStat{Store: mem, began: make(chan struct{}), release: make(chan struct{})}
	svc, err := chunk.New(gated, chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []chunk.ID)
	go func() {
		missing, err := svc.FindMissing(context.Background(), []chunk.ID{id})
		if err != nil {
			t.Error(err)
		}
		done <- missing
	}()
	<-gated.began // storage has answered "present"; the answer is in flight
	svc.Forget(id)
	if err := mem.Delete(t.Context(), id.Key()); err != nil {
		t.Fatal(err)
	}
	svc.Forget(id)
	close(gated.release)
	if missing := <-done; len(missing) != 0 {
		t.Fatalf("the check in flight answered %v; it asked before the delete and should say present", missing)
	}
	go func() { <-gated.began }()
	missing, err := svc.FindMissing(t.Context(), []chunk.ID{id})
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 1 {
		t.Fatal("after the delete and Forget, the presence cache still claims the chunk")
	}
}

func TestForgetAll(t *testing.T) {
	mem := memory.New()
	svc, _ := chunk.New(mem, chunk.Config{}, nil)
	data := []byte("cached")
	id := chunk.ID(sha256.Sum256(data))
	if _, err := svc.Put(t.Context(), chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	mem.Delete(t.Context(), id.Key()) // another process collected it
	if missing, _ := svc.FindMissing(t.Context(), []chunk.ID{id}); len(missing) != 0 {
		t.Fatal("the cache should still claim the chunk before ForgetAll")
	}
	svc.ForgetAll()
	if missing, _ := svc.FindMissing(t.Context(), []chunk.ID{id}); len(missing) != 1 {
		t.Fatal("after ForgetAll the cache still claims a deleted chunk")
	}
}
