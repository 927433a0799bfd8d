package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// catalogFixture is the catalog behind gRPC and a chunk client to store
// what its files reference.
type catalogFixture struct {
	cat    *client.Catalog
	chunks *client.Chunks
}

func newCatalog(t *testing.T) catalogFixture {
	s := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
	return catalogFixture{cat: client.NewCatalogGRPC(s.Conn), chunks: client.NewGRPC(s.Conn)}
}

// blobIndex builds an index of n chunks and stores those stored chooses.
func (f catalogFixture) blobIndex(t *testing.T, seed, n int, stored func(int) bool) ([]byte, []client.ID) {
	t.Helper()
	h, _ := caindex.BlobHeader(caindex.SHA256, 1, 4096, 1<<20)
	var b bytes.Buffer
	w, err := caindex.NewWriter(&b, h)
	if err != nil {
		t.Fatal(err)
	}
	var ids []client.ID
	var ups []client.Upload
	for i := range n {
		data, id := chunkOf(seed*100000+i, 100+i)
		ids = append(ids, id)
		w.Add(id, uint64(len(data)))
		if stored(i) {
			ups = append(ups, raw(data, id))
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range upload(t, f.chunks, client.UploadOptions{}, ups...) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return b.Bytes(), ids
}

func every(int) bool { return true }

// putIndex writes data in pieces of piece bytes and commits.
func putIndex(t *testing.T, cat *client.Catalog, name string, data []byte, piece int) (client.IndexInfo, error) {
	t.Helper()
	w, err := cat.PutIndex(t.Context(), name)
	if err != nil {
		return client.IndexInfo{}, err
	}
	for off := 0; off < len(data); off += piece {
		if _, err := w.Write(data[off:min(len(data), off+piece)]); err != nil {
			w.Abort()
			return client.IndexInfo{}, err
		}
	}
	return w.Commit()
}

func TestCatalogIndexRoundTrip(t *testing.T) {
	f := newCatalog(t)
	data, _ := f.blobIndex(t, 1, 300, every)
	info, err := putIndex(t, f.cat, "images/a.caibx", data, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "images/a.caibx" || info.Size != int64(len(data)) || info.ChunkCount != 300 ||
		info.Algorithm != chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256 || info.ContentSize == 0 || info.Created.IsZero() {
		t.Fatalf("Commit = %+v", info)
	}
	st, err := f.cat.StatIndex(t.Context(), "images/a.caibx")
	if err != nil || st.Size != info.Size || st.ChunkCount != 300 || st.ContentSize != info.ContentSize {
		t.Fatalf("StatIndex = %+v, %v", st, err)
	}

	// Read and WriteTo see the same bytes.
	r, err := f.cat.GetIndex(t.Context(), "images/a.caibx")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 77)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("Read returned %d bytes, want the %d put", got.Len(), len(data))
	}
	r, err = f.cat.GetIndex(t.Context(), "images/a.caibx")
	if err != nil {
		t.Fatal(err)
	}
	got.Reset()
	if n, err := io.Copy(&got, r); err != nil || n != int64(len(data)) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("io.Copy = %d, %v; want the %d bytes put", n, err, len(data))
	}
	r.Close()

	// A commit with nothing written sends the name alone: the catalog
	// refuses the empty index.
	w, err := f.cat.PutIndex(t.Context(), "images/empty.caibx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("empty index: %v, want ErrInvalid", err)
	}
}

func TestCatalogIndexErrors(t *testing.T) {
	f := newCatalog(t)
	for _, name := range []string{"images/none.caibx", "snapshots/../x"} {
		_, err := f.cat.StatIndex(t.Context(), name)
		want := apierr.ErrNotFound
		if name != "images/none.caibx" {
			want = apierr.ErrInvalid
		}
		if !errors.Is(err, want) {
			t.Errorf("StatIndex(%q) = %v, want %v", name, err, want)
		}
		// GetIndex fails before it returns a reader.
		if r, err := f.cat.GetIndex(t.Context(), name); !errors.Is(err, want) || r != nil {
			t.Errorf("GetIndex(%q) = %v, %v, want %v", name, r, err, want)
		}
	}

	// An index with a chunk the store lacks is not published.
	data, _ := f.blobIndex(t, 2, 50, func(i int) bool { return i != 7 })
	_, err := putIndex(t, f.cat, "images/b.caibx", data, 512)
	if !errors.Is(err, apierr.ErrFailedPrecondition) || apierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("missing chunk: %v, want ErrFailedPrecondition", err)
	}
	if _, err := f.cat.StatIndex(t.Context(), "images/b.caibx"); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("an index with a missing chunk was published: %v", err)
	}

	// A refused name.
	if _, err := putIndex(t, f.cat, "bad/../x.caibx", data, 512); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("bad name: %v, want ErrInvalid", err)
	}

	// Garbage: the catalog refuses it, and Write or Commit says so.
	if _, err := putIndex(t, f.cat, "images/garbage.caibx", bytes.Repeat([]byte("x"), 1<<20), 4096); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("garbage: %v, want ErrInvalid", err)
	}

	// Abort leaves nothing, and Commit after it fails.
	full, _ := f.blobIndex(t, 3, 10, every)
	w, err := f.cat.PutIndex(t.Context(), "images/aborted.caibx")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(full); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	if _, err := w.Commit(); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	if _, err := f.cat.StatIndex(t.Context(), "images/aborted.caibx"); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("an aborted index was published: %v", err)
	}
}

// storeChunks stores n chunks of seed and returns their ids.
func (f catalogFixture) storeChunks(t *testing.T, seed, n, size int) []client.ID {
	t.Helper()
	var ups []client.Upload
	var ids []client.ID
	for i := range n {
		data, id := chunkOf(seed*100000+i, size)
		ups = append(ups, raw(data, id))
		ids = append(ids, id)
	}
	for _, r := range upload(t, f.chunks, client.UploadOptions{}, ups...) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	return ids
}

var snapTime = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func TestCatalogSnapshotFile(t *testing.T) {
	f := newCatalog(t)
	ids := f.storeChunks(t, 1, 2500, 64)
	w, err := f.cat.WriteSnapshotFile(t.Context(), client.SnapshotCreate{
		Type: "host", BackupID: "web-01", Time: snapTime, Name: "root.pxar", Exclusive: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "host/web-01/2026-11-25T10:00:00Z/root.pxar.didx"; w.Path() != want || !w.Time().Equal(snapTime) {
		t.Fatalf("created %s at %v, want %s at %v", w.Path(), w.Time(), want, snapTime)
	}
	for off := 0; off < len(ids); off += 1000 {
		var batch []client.SnapshotEntry
		for i, id := range ids[off:min(len(ids), off+1000)] {
			batch = append(batch, client.SnapshotEntry{Offset: int64(off+i) * 64, ID: id})
		}
		if err := w.Entries(batch...); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	info, err := w.Next()
	if err != nil || info.Path != w.Path() || info.Name != "root.pxar.didx" || info.Fixed || info.ChunkCount != 2500 || info.ContentSize != 2500*64 || info.Size == 0 {
		t.Fatalf("Next = %+v, %v", info, err)
	}
	if _, err := w.Next(); err != io.EOF {
		t.Fatalf("Next after the commit = %v, want io.EOF", err)
	}

	// The digests come back in order, decoded, for the path and "latest".
	for _, path := range []string{w.Path(), "host/web-01/latest/root.pxar.didx"} {
		it := f.cat.SnapshotDigests(t.Context(), path)
		var got []client.ID
		for {
			id, err := it.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, id)
		}
		it.Close()
		if fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Fatalf("%s: %d digests, want the %d written in order", path, len(got), len(ids))
		}
	}

	// The same file again, exclusively: refused at create.
	if _, err := f.cat.WriteSnapshotFile(t.Context(), client.SnapshotCreate{
		Type: "host", BackupID: "web-01", Time: snapTime, Name: "root.pxar", Exclusive: true,
	}); !errors.Is(err, apierr.ErrExists) {
		t.Fatalf("exclusive create of an existing file: %v, want ErrExists", err)
	}
	// A bad create.
	if _, err := f.cat.WriteSnapshotFile(t.Context(), client.SnapshotCreate{Type: "pc", BackupID: "x", Name: "a"}); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("bad type: %v, want ErrInvalid", err)
	}
}

func TestCatalogSnapshotRefusals(t *testing.T) {
	f := newCatalog(t)
	ids := f.storeChunks(t, 2, 2, 4096)
	_, absent := chunkOf(999999, 4096)
	w, err := f.cat.WriteSnapshotFile(t.Context(), client.SnapshotCreate{
		Type: "vm", BackupID: "100", Time: snapTime, Name: "drive-scsi0.img", Fixed: true, ChunkSize: 4096, FileSize: 3 * 4096,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Slot 1 references a chunk the store lacks, slot 7 is out of range:
	// both refused, the stream goes on, and the commit fails.
	if err := w.Entries(
		client.SnapshotEntry{Slot: 0, ID: ids[0]},
		client.SnapshotEntry{Slot: 1, ID: absent},
		client.SnapshotEntry{Slot: 7, ID: ids[1]},
	); err != nil {
		t.Fatal(err)
	}
	var r *client.RefusedEntry
	_, err = w.Next()
	if !errors.As(err, &r) || r.Digest != absent.String() || !errors.Is(err, apierr.ErrMissingChunks) ||
		!errors.Is(err, apierr.ErrFailedPrecondition) || apierr.Code(err) != codes.FailedPrecondition {
		t.Fatalf("entry with an absent chunk: %v, want a RefusedEntry with ErrMissingChunks", err)
	}
	_, err = w.Next()
	if !errors.As(err, &r) || r.Digest != ids[1].String() || !errors.Is(err, apierr.ErrInvalid) || errors.Is(err, apierr.ErrMissingChunks) {
		t.Fatalf("entry out of range: %v, want a RefusedEntry with ErrInvalid", err)
	}
	if err := w.Entries(client.SnapshotEntry{Slot: 2, ID: ids[1]}); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	_, err = w.Next()
	if !errors.Is(err, apierr.ErrInvalid) || errors.As(err, &r) {
		t.Fatalf("commit after refusals: %v, want the stream's ErrInvalid", err)
	}
	it := f.cat.SnapshotDigests(t.Context(), w.Path())
	if _, err := it.Next(); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("digests of a file never published: %v, want ErrNotFound", err)
	}
	it.Close()
	it = f.cat.SnapshotDigests(t.Context(), "vm/100/not-a-time/x.fidx")
	if _, err := it.Next(); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("digests of a bad path: %v, want ErrInvalid", err)
	}
	it.Close()

	// Abort: nothing is published, Next reports the end.
	w, err = f.cat.WriteSnapshotFile(t.Context(), client.SnapshotCreate{Type: "ct", BackupID: "101", Time: snapTime, Name: "root.pxar"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Entries(client.SnapshotEntry{Offset: 0, ID: ids[0]}); err != nil {
		t.Fatal(err)
	}
	w.Abort()
	if _, err := w.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Abort: %v, want context.Canceled", err)
	}
	it = f.cat.SnapshotDigests(t.Context(), w.Path())
	if _, err := it.Next(); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("digests of an aborted file: %v, want ErrNotFound", err)
	}
	it.Close()
}
