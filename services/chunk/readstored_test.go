package chunk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math"
	"sync/atomic"
	"testing"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// openCounting counts the store's readers not yet closed.
type openCounting struct {
	*memory.Store
	open atomic.Int64
}

func (s *openCounting) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	rc, info, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, info, err
	}
	s.open.Add(1)
	return countedReader{rc, &s.open}, info, nil
}

type countedReader struct {
	io.ReadCloser
	open *atomic.Int64
}

func (r countedReader) Close() error { r.open.Add(-1); return r.ReadCloser.Close() }

// ReadStored (ReadChunks) waits for its work slot before it opens the
// object, as Get does: a read queued behind busy slots must not hold a
// descriptor (or an object store's response) meanwhile, or many
// ReadChunks streams, each with a window of reads, run the process out
// of descriptors while they wait.
func TestReadStoredOpensAfterItsWorkSlot(t *testing.T) {
	store := &openCounting{Store: memory.New()}
	svc, err := New(store, Config{MaxConcurrentChunks: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("a stored chunk "), 100)
	id := ID(sha256.Sum256(data))
	if _, err := svc.Put(t.Context(), Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	if err := svc.acquire(t.Context()); err != nil { // every slot busy
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := svc.ReadStored(t.Context(), id)
		done <- err
	}()
	for range 20 {
		time.Sleep(10 * time.Millisecond)
		if n := store.open.Load(); n != 0 {
			t.Fatalf("%d objects open while the read waits for a work slot", n)
		}
	}
	svc.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := store.open.Load(); n != 0 {
		t.Fatalf("%d objects left open after the read", n)
	}
}

// A ReadChunks read's timeout_ms is the client's: one too large for a
// time.Duration (here math.MaxInt64) is no deadline, not one that wraps
// into the past and fails the read at once.
func TestReadChunksHugeTimeout(t *testing.T) {
	svc, err := New(memory.New(), Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("another stored chunk "), 100)
	id := ID(sha256.Sum256(data))
	if _, err := svc.Put(t.Context(), Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(svc, ServerConfig{})
	for _, ms := range []int64{math.MaxInt64, math.MaxInt64 / 1000, 60000} {
		resp := srv.read(t.Context(), auth.Principal{}, false, &chunkbridgev1.ReadChunksRequest{Tag: 1, Id: id.String(), TimeoutMs: ms}, nil)
		if resp.Resp.GetCode() != 0 || len(resp.Resp.GetData()) == 0 {
			t.Errorf("timeout_ms %d: code %d, %q", ms, resp.Resp.GetCode(), resp.Resp.GetMessage())
		}
	}
}
