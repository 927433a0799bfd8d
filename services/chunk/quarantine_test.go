package chunk_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

var quarantineStores = []struct {
	name string
	open func(t *testing.T) storage.Store
}{
	{"fs", func(t *testing.T) storage.Store {
		s, err := fs.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}},
	{"minio", func(t *testing.T) storage.Store { return miniotest.SharedStore(t) }},
}

func rawUpload(data []byte) chunk.Upload {
	return chunk.Upload{ID: chunk.ID(sha256.Sum256(data)), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}
}

// A read that finds a chunk corrupt moves it to quarantine (bytes kept,
// with why) and removes it, so that it reads as missing everywhere: this
// replica's presence cache forgets it, another replica's empties on its
// next look at the removal marker, and the next upload of the same data
// stores a good copy that reads back. Without quarantine the chunk stays
// "stored" and the upload is skipped.
func TestReadQuarantinesCorruptChunk(t *testing.T) {
	for _, st := range quarantineStores {
		t.Run(st.name, func(t *testing.T) {
			store := st.open(t)
			ctx := t.Context()
			a, _ := chunk.New(store, chunk.Config{}, nil)
			b, _ := chunk.New(store, chunk.Config{}, nil) // another replica
			bSeen := b.PollRemovals(ctx, "")
			up := rawUpload([]byte(strings.Repeat("quarantine me ", 300)))
			id := up.ID
			for _, s := range []*chunk.Service{a, b} {
				if _, err := s.Put(ctx, up); err != nil {
					t.Fatal(err)
				}
			}
			enc, _ := zstd.NewWriter(nil)
			bad := enc.EncodeAll([]byte("other data entirely"), nil)
			storagetest.Overwrite(t, store, id.Key(), bad)

			_, err := a.Get(ctx, id, true)
			var q *chunk.QuarantinedError
			if !errors.Is(err, apierr.ErrDigestMismatch) || !errors.As(err, &q) || q.Key == "" || !strings.Contains(err.Error(), "quarantine") {
				t.Fatalf("reading the corrupt chunk: %v; want a data-loss error naming its quarantine", err)
			}
			if !strings.HasPrefix(q.Key, chunk.QuarantinedPrefix(id)) {
				t.Fatalf("quarantined as %s, want under %s", q.Key, chunk.QuarantinedPrefix(id))
			}
			rc, info, err := store.Get(ctx, q.Key)
			if err != nil {
				t.Fatalf("the quarantined copy: %v", err)
			}
			kept, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(kept, bad) || !strings.Contains(info.Metadata["reason"], "hashes") || info.Metadata["quarantined"] == "" || info.Metadata["algorithm"] == "" {
				t.Fatalf("quarantined copy: %d bytes (want the %d damaged ones), metadata %v", len(kept), len(bad), info.Metadata)
			}
			if _, err := store.Stat(ctx, id.Key()); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("the corrupt chunk is still in chunks/: %v", err)
			}
			if missing, err := a.FindMissing(ctx, []chunk.ID{id}); err != nil || len(missing) != 1 {
				t.Fatalf("after quarantine this replica reports missing %v, %v; want the chunk", missing, err)
			}
			if missing, _ := b.FindMissing(ctx, []chunk.ID{id}); len(missing) != 0 {
				t.Fatal("the other replica forgot before looking at the marker; the test proves nothing")
			}
			b.PollRemovals(ctx, bSeen)
			if missing, err := b.FindMissing(ctx, []chunk.ID{id}); err != nil || len(missing) != 1 {
				t.Fatalf("after its look at the removal marker the other replica reports missing %v, %v", missing, err)
			}
			if created, err := b.Put(ctx, up); err != nil || !created {
				t.Fatalf("re-upload through the other replica: created %v, %v; want a new good copy", created, err)
			}
			c, err := a.Get(ctx, id, true)
			if err != nil || !bytes.Equal(c.Data, up.Data) {
				t.Fatalf("after the re-upload: %v", err)
			}
		})
	}
}

// onceCorrupt returns damaged bytes for the first read of one key: damage
// on the way from storage, not in it.
type onceCorrupt struct {
	storage.Store
	key  string
	done atomic.Bool
}

func (o *onceCorrupt) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	rc, info, err := o.Store.Get(ctx, key)
	if err != nil || key != o.key || o.done.Swap(true) {
		return rc, info, err
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	b[len(b)/2] ^= 0xff
	return io.NopCloser(bytes.NewReader(b)), info, nil
}

// A chunk that reads corrupt once and intact on the re-read quarantine
// makes is left in place, and the reader is told to retry (UNAVAILABLE).
func TestIntactOnSecondReadIsNotQuarantined(t *testing.T) {
	store := quarantineStores[0].open(t)
	up := rawUpload([]byte(strings.Repeat("flaky wire ", 500)))
	o := &onceCorrupt{Store: store, key: up.ID.Key()}
	svc, _ := chunk.New(o, chunk.Config{}, nil)
	if _, err := svc.Put(t.Context(), up); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Get(t.Context(), up.ID, true)
	if !errors.Is(err, storage.ErrUnavailable) || errors.Is(err, apierr.ErrDigestMismatch) {
		t.Fatalf("first read: %v; want unavailable (retry), not corrupt", err)
	}
	if c, err := svc.Get(t.Context(), up.ID, true); err != nil || !bytes.Equal(c.Data, up.Data) {
		t.Fatalf("second read: %v", err)
	}
	n := 0
	store.List(t.Context(), chunk.QuarantinePrefix, func(storage.Info) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d objects in quarantine; want none", n)
	}
}
