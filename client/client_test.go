package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// transports runs the conformance suite on both transports of one
// contract: what passes on one must pass on the other.
func transports(t *testing.T, test func(t *testing.T, c *client.Chunks)) {
	for _, tr := range []struct {
		name string
		open func(s *servicetest.Services) *client.Chunks
	}{
		{"grpc", func(s *servicetest.Services) *client.Chunks { return client.NewGRPC(s.Conn) }},
		{"local", func(s *servicetest.Services) *client.Chunks { return client.NewLocal(s.Chunks, 0) }},
	} {
		t.Run(tr.name, func(t *testing.T) {
			s := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
			test(t, tr.open(s))
		})
	}
}

func chunkOf(i int, size int) ([]byte, client.ID) {
	data := bytes.Repeat([]byte(fmt.Sprintf("chunk %d;", i)), size/8+1)[:size]
	return data, sha256.Sum256(data)
}

func raw(data []byte, id client.ID) client.Upload {
	return client.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}
}

// upload stores uploads and returns their results in the order delivered.
func upload(t *testing.T, c *client.Chunks, opts client.UploadOptions, ups ...client.Upload) []client.Result {
	t.Helper()
	u, err := c.NewUploader(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []client.Result
	for _, up := range ups {
		if err := u.Put(t.Context(), up, func(r client.Result) { got = append(got, r) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestUploadOrderedWithItemErrors(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		var ups []client.Upload
		for i := range 40 {
			data, id := chunkOf(i, 1000+i*997)
			ups = append(ups, raw(data, id))
		}
		bad, badID := chunkOf(1000, 5000)
		bad = append([]byte(nil), bad...)
		bad[0] ^= 1 // no longer hashes to badID
		ups = append(ups[:20], append([]client.Upload{raw(bad, badID), ups[3]}, ups[20:]...)...)
		got := upload(t, c, client.UploadOptions{Window: 4, WindowBytes: 16 << 10}, ups...)
		if len(got) != len(ups) {
			t.Fatalf("%d results for %d chunks", len(got), len(ups))
		}
		for i, r := range got {
			if r.ID != ups[i].ID {
				t.Fatalf("result %d is for %s, want %s: acknowledgements out of order", i, r.ID, ups[i].ID)
			}
			switch {
			case i == 20:
				if !errors.Is(r.Err, apierr.ErrDataLoss) || apierr.Code(r.Err).String() != "DataLoss" {
					t.Errorf("corrupted chunk: %v, want a DataLoss error", r.Err)
				}
			case i == 21:
				if r.Err != nil || r.Created {
					t.Errorf("a duplicate: created=%v err=%v, want an existing chunk", r.Created, r.Err)
				}
			default:
				if r.Err != nil || !r.Created {
					t.Errorf("chunk %d: created=%v err=%v", i, r.Created, r.Err)
				}
			}
		}
		missing, err := c.FindMissing(t.Context(), []client.ID{ups[0].ID, badID, ups[39].ID})
		if err != nil || len(missing) != 1 || missing[0] != badID {
			t.Fatalf("FindMissing = %v, %v; want only the refused chunk", missing, err)
		}
	})
}

// A chunk larger than every protocol can restore is refused at upload.
func TestUploadTooLarge(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		data, id := chunkOf(1, format.MaxChunk+1)
		r := upload(t, c, client.UploadOptions{}, raw(data, id))
		if !errors.Is(r[0].Err, apierr.ErrInvalid) {
			t.Fatalf("a %d-byte chunk: %v, want ErrInvalid", len(data), r[0].Err)
		}
		data, id = chunkOf(2, format.MaxChunk)
		if r := upload(t, c, client.UploadOptions{}, raw(data, id)); r[0].Err != nil {
			t.Fatalf("a chunk of exactly format.MaxChunk: %v", r[0].Err)
		}
	})
}

// Put blocks while the window is full: with the acknowledger held in a
// done function, a third Put past a window of two cannot start.
func TestUploadWindowHoldsBack(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		u, err := c.NewUploader(t.Context(), client.UploadOptions{Window: 2})
		if err != nil {
			t.Fatal(err)
		}
		hold := make(chan struct{})
		var n int
		done := func(client.Result) {
			if n++; n == 1 {
				<-hold
			}
		}
		for i := range 3 {
			data, id := chunkOf(i, 100)
			if err := u.Put(t.Context(), raw(data, id), done); err != nil {
				t.Fatal(err)
			}
		}
		// The first result is held; the second and third fill the window.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		data, id := chunkOf(9, 100)
		if err := u.Put(ctx, raw(data, id), done); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put into a full window = %v, want it to wait (and fail with the cancelled context)", err)
		}
		close(hold)
		if err := u.Close(); err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Fatalf("%d results, want 3", n)
		}
	})
}

func TestDownloadInOrder(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		var ups []client.Upload
		var ids []client.ID
		for i := range 30 {
			data, id := chunkOf(i, 3000+i)
			ups = append(ups, raw(data, id))
			ids = append(ids, id)
		}
		upload(t, c, client.UploadOptions{}, ups...)
		_, absent := chunkOf(999, 10)
		ids = append(ids[:10], append([]client.ID{absent}, ids[10:]...)...)
		dec, _ := zstd.NewReader(nil)
		for _, rawForm := range []bool{true, false} {
			d := c.Download(t.Context(), ids, client.DownloadOptions{Raw: rawForm})
			for i, id := range ids {
				ch, err := d.Next()
				if err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
				if ch.ID != id {
					t.Fatalf("chunk %d is %s, want %s", i, ch.ID, id)
				}
				if id == absent {
					if !errors.Is(ch.Err, apierr.ErrNotFound) {
						t.Fatalf("absent chunk: %v, want ErrNotFound", ch.Err)
					}
					continue
				}
				data := ch.Data
				if !rawForm {
					if ch.Encoding != chunkbridgev1.Encoding_ENCODING_ZSTD {
						t.Fatalf("stored form is %s", ch.Encoding)
					}
					if data, err = dec.DecodeAll(ch.Data, nil); err != nil {
						t.Fatal(err)
					}
				}
				if sha256.Sum256(data) != id || ch.Size != int64(len(data)) {
					t.Fatalf("chunk %d: wrong data or size %d", i, ch.Size)
				}
			}
			if _, err := d.Next(); err != io.EOF {
				t.Fatalf("after the last chunk: %v, want io.EOF", err)
			}
		}
	})
}

// A download that ends early releases its read-ahead; Next then fails.
func TestDownloadClose(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		var ids []client.ID
		var ups []client.Upload
		for i := range 50 {
			data, id := chunkOf(i, 10000)
			ups, ids = append(ups, raw(data, id)), append(ids, id)
		}
		upload(t, c, client.UploadOptions{}, ups...)
		d := c.Download(t.Context(), ids, client.DownloadOptions{})
		if _, err := d.Next(); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if _, err := d.Next(); err == nil {
			t.Fatal("Next after Close succeeded")
		}
	})
}

func TestStatAndFindMissing(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		data, id := chunkOf(1, 500)
		upload(t, c, client.UploadOptions{}, raw(data, id))
		info, err := c.Stat(t.Context(), id)
		if err != nil || info.GetSize() != 500 {
			t.Fatalf("Stat = %v, %v", info, err)
		}
		_, absent := chunkOf(2, 500)
		if _, err := c.Stat(t.Context(), absent); !errors.Is(err, apierr.ErrNotFound) {
			t.Fatalf("Stat of an absent chunk: %v, want ErrNotFound", err)
		}
		// More ids than one call carries: the client splits them.
		ids := make([]client.ID, chunk.MaxIDsPerCall+3)
		for i := range ids {
			ids[i][0], ids[i][1], ids[i][2] = byte(i), byte(i>>8), byte(i>>16)
		}
		ids[chunk.MaxIDsPerCall+1] = id
		missing, err := c.FindMissing(t.Context(), ids)
		if err != nil || len(missing) != len(ids)-1 {
			t.Fatalf("FindMissing of %d ids: %d missing, %v", len(ids), len(missing), err)
		}
	})
}

// OpenStored yields the chunk as stored (what Download yields without
// Raw), with its size, and Download's errors.
func TestOpenStored(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		data, id := chunkOf(1, 70000)
		upload(t, c, client.UploadOptions{}, raw(data, id))
		d := c.Download(t.Context(), []client.ID{id}, client.DownloadOptions{})
		want, err := d.Next()
		d.Close()
		if err != nil || want.Err != nil {
			t.Fatal(err, want.Err)
		}
		rc, size, err := c.OpenStored(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil || size != int64(len(want.Data)) || !bytes.Equal(got, want.Data) {
			t.Fatalf("OpenStored: size %d, %d bytes, %v; want the %d stored bytes", size, len(got), err, len(want.Data))
		}
		dec, _ := zstd.NewReader(nil)
		if plain, err := dec.DecodeAll(got, nil); err != nil || sha256.Sum256(plain) != id {
			t.Fatalf("the stored bytes do not decode to the chunk: %v", err)
		}

		_, absent := chunkOf(2, 500)
		_, _, err = c.OpenStored(t.Context(), absent)
		if !errors.Is(err, apierr.ErrNotFound) || apierr.Code(err).String() != "NotFound" {
			t.Fatalf("OpenStored of an absent chunk: %v, want ErrNotFound", err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if _, _, err := c.OpenStored(ctx, id); !errors.Is(err, context.Canceled) {
			t.Fatalf("OpenStored with a cancelled context: %v, want context.Canceled", err)
		}
	})
}

// In the process that runs the service on a directory store, OpenStored
// hands out the file itself (the store's *fs.File, a syscall.Conn), so
// that net/http can send it with sendfile.
func TestOpenStoredLocalFileIsTheFile(t *testing.T) {
	st, err := fs.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := servicetest.Start(t, st, chunk.Config{}, catalog.Config{})
	c := client.NewLocal(s.Chunks, 0)
	data, id := chunkOf(1, 5000)
	upload(t, c, client.UploadOptions{}, raw(data, id))
	rc, _, err := c.OpenStored(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, ok := rc.(*fs.File); !ok {
		t.Fatalf("OpenStored on the local transport over an fs store gave a %T, want the store's *fs.File", rc)
	}
	if _, ok := rc.(syscall.Conn); !ok {
		t.Fatalf("OpenStored's %T is no syscall.Conn: net's sendfile would not take it", rc)
	}
}

// blockingStore holds the PutIfAbsent of key, ignoring its context, until
// release is closed: a Put still at work on the chunk's bytes.
type blockingStore struct {
	storage.Store
	key      string
	entered  chan struct{}
	release  chan struct{}
	returned atomic.Bool
}

func (s *blockingStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	if key != s.key {
		return s.Store.PutIfAbsent(ctx, key, r, size, meta)
	}
	s.entered <- struct{}{}
	<-s.release
	defer s.returned.Store(true)
	return s.Store.PutIfAbsent(ctx, key, r, size, meta)
}

// On the local transport, a chunk's done is not called while the chunk
// service's Put still works on its bytes, even when the stream's context
// ends first: the caller may refill the buffer once done runs.
func TestLocalUploadDoneWaitsForPut(t *testing.T) {
	// The acknowledger meets the ended context and the pending result at
	// once, and chooses at random: enough rounds that it chooses the
	// context.
	for round := range 20 {
		data1, id1 := chunkOf(2*round, 1000)
		data2, id2 := chunkOf(2*round+1, 1000)
		store := &blockingStore{Store: memory.New(), key: id2.Key(), entered: make(chan struct{}, 1), release: make(chan struct{})}
		s := servicetest.Start(t, store, chunk.Config{}, catalog.Config{})
		c := client.NewLocal(s.Chunks, 0)
		ctx, cancel := context.WithCancel(t.Context())
		u, err := c.NewUploader(ctx, client.UploadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The first chunk's done holds the acknowledger until the second
		// chunk's Put is under way and the context has ended.
		inFirst, gate := make(chan struct{}), make(chan struct{})
		if err := u.Put(ctx, raw(data1, id1), func(client.Result) { close(inFirst); <-gate }); err != nil {
			t.Fatal(err)
		}
		done := make(chan bool, 1) // whether the store's Put had returned
		if err := u.Put(ctx, raw(data2, id2), func(client.Result) { done <- store.returned.Load() }); err != nil {
			t.Fatal(err)
		}
		<-store.entered
		<-inFirst
		cancel()
		close(gate)
		// done must wait for the release: give a wrong early done time
		// to show, then release.
		var returned bool
		select {
		case returned = <-done:
			close(store.release)
		case <-time.After(50 * time.Millisecond):
			close(store.release)
			returned = <-done
		}
		if !returned {
			t.Fatalf("round %d: done ran while the chunk service's Put still held the chunk", round)
		}
		u.Close()
	}
}
