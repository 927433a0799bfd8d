package chunk_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// In a shared domain, a read that waited for another call's rebuild of the
// tenant's references, which failed (storage unreachable, that caller
// gone), must not answer that the chunk is not stored: the client would
// take a restore's missing chunk for lost data.
func TestServingWaiterOfFailedRebuild(t *testing.T) {
	svc, err := chunk.New(memory.New(), chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	acme := auth.Principal{Name: "a", Tenant: "acme", Role: auth.RoleWrite, Domain: "acme"}
	dev := auth.Principal{Name: "d", Tenant: "acme-dev", Role: auth.RoleRead, Domain: "acme"}
	data := []byte("a chunk acme-dev's files reference")
	id := chunk.ID(sha256.Sum256(data))
	if _, err := svc.Put(auth.NewContext(t.Context(), acme), chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	began, release := make(chan struct{}, 2), make(chan struct{})
	calls := 0
	svc.SetReferences(func(ctx context.Context, tenant string, each func(chunk.ID) error) error {
		calls++
		first := calls == 1
		began <- struct{}{}
		if first {
			<-release
			return storage.ErrUnavailable
		}
		return each(id)
	})
	devCtx := auth.NewContext(t.Context(), dev)
	firstErr := make(chan error, 1)
	go func() {
		_, err := svc.Get(devCtx, id, true)
		firstErr <- err
	}()
	<-began // the first read rebuilds
	waiting := make(chan struct{}, 1)
	chunk.OnWaitRebuild(func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	})
	defer chunk.OnWaitRebuild(nil)
	second := make(chan error, 1)
	go func() {
		_, err := svc.Get(devCtx, id, true)
		second <- err
	}()
	<-waiting // the second waits for that rebuild
	close(release)
	if err := <-firstErr; err == nil || errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("the read whose rebuild failed: %v; want the failure", err)
	}
	if err := <-second; errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("a read that waited for a failed rebuild: %v; want the chunk or a failure, never \"not stored\"", err)
	}
}
