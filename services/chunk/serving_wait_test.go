package chunk_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"sync/atomic"
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

// listCounter counts the listings of the tenant bindings.
type listCounter struct {
	storage.Store
	lists atomic.Int64
}

func (l *listCounter) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if prefix == chunk.BindingPrefix {
		l.lists.Add(1)
	}
	return l.Store.List(ctx, prefix, fn)
}

// A tenant whose binding is gone from the store (deleted by hand) reads
// only what it references, as in a shared domain; but its reads do not
// each list and read every tenant's binding again: one read of them per
// sharingTTL, as for any tenant.
func TestServingAbsentBindingReadOnce(t *testing.T) {
	st := &listCounter{Store: memory.New()}
	svc, err := chunk.New(st, chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dev := auth.Principal{Name: "d", Tenant: "acme-dev", Role: auth.RoleWrite, Domain: "acme"}
	data := []byte("a chunk acme-dev uploaded")
	id := chunk.ID(sha256.Sum256(data))
	devCtx := auth.NewContext(t.Context(), dev)
	if _, err := svc.Put(devCtx, chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	svc.SetReferences(func(context.Context, string, func(chunk.ID) error) error { return nil })
	if err := st.Delete(t.Context(), chunk.BindingPrefix+"acme-dev"); err != nil {
		t.Fatal(err)
	}
	acme := auth.Principal{Name: "a", Tenant: "acme", Role: auth.RoleWrite, Domain: "acme"}
	otherData := []byte("acme's chunk, not acme-dev's")
	other := chunk.ID(sha256.Sum256(otherData))
	if _, err := svc.Put(auth.NewContext(t.Context(), acme), chunk.Upload{ID: other, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: otherData}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := svc.Get(devCtx, id, true); err != nil {
			t.Fatalf("acme-dev reading its upload: %v", err)
		}
		if _, err := svc.Get(devCtx, other, true); !errors.Is(err, apierr.ErrNotFound) {
			t.Fatalf("acme-dev reading a chunk it neither references nor uploaded: %v; want not found", err)
		}
	}
	if n := st.lists.Load(); n != 1 {
		t.Fatalf("the bindings were listed %d times for 10 reads; want 1", n)
	}
}
