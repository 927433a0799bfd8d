package catalog_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

type fixture struct {
	chunks  *chunk.Service
	catalog chunkbridgev1.CatalogServiceClient
	store   storage.Store
	server  *catalog.Server
}

func newFixture(t *testing.T, cfg catalog.Config) *fixture {
	t.Helper()
	return newFixtureOn(t, memory.New(), cfg)
}

func newFixtureOn(t *testing.T, store storage.Store, cfg catalog.Config) *fixture {
	t.Helper()
	svcs := servicetest.Start(t, store, chunk.Config{}, cfg)
	return &fixture{chunks: svcs.Chunks, catalog: svcs.CatalogClient(), store: store, server: svcs.Catalog}
}

// index builds an index of n chunks of seed; stored chooses which chunks
// are uploaded first.
func (f *fixture) index(t *testing.T, seed, n int, stored func(i int) bool) ([]byte, [][32]byte) {
	t.Helper()
	h, _ := caindex.BlobHeader(caindex.SHA256, 1, 4096, 1<<20)
	var b bytes.Buffer
	w, err := caindex.NewWriter(&b, h)
	if err != nil {
		t.Fatal(err)
	}
	var ids [][32]byte
	for i := range n {
		data := []byte(fmt.Sprintf("chunk %d of %d", i, seed))
		id := sha256.Sum256(data)
		ids = append(ids, id)
		w.Add(id, uint64(len(data)))
		if stored(i) {
			_, err := f.chunks.Put(t.Context(), chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), ids
}

func all(int) bool { return true }

func (f *fixture) put(t *testing.T, name string, data []byte) (*chunkbridgev1.IndexInfo, error) {
	t.Helper()
	stream, err := f.catalog.PutIndex(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&chunkbridgev1.PutIndexRequest{Name: name})
	for len(data) > 0 { // uneven pieces
		n := min(len(data), 777)
		stream.Send(&chunkbridgev1.PutIndexRequest{Data: data[:n]})
		data = data[n:]
	}
	resp, err := stream.CloseAndRecv()
	return resp.GetIndex(), err
}

func (f *fixture) get(t *testing.T, name string) ([]byte, error) {
	stream, err := f.catalog.GetIndex(t.Context(), &chunkbridgev1.GetIndexRequest{Name: name})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Data...)
	}
}

func TestIndexLifecycle(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	data, _ := f.index(t, 1, 300, all)
	info, err := f.put(t, "/images/a.caibx", data)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "images/a.caibx" || info.ChunkCount != 300 || info.Size != int64(len(data)) ||
		info.Algorithm != chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256 || info.ContentSize == 0 || info.Created == nil {
		t.Fatalf("PutIndex = %+v", info)
	}
	if got, err := f.get(t, "images/a.caibx"); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("GetIndex returned %d bytes (%v), want the %d put", len(got), err, len(data))
	}
	st, err := f.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: "images/a.caibx"})
	if err != nil || st.Index.ChunkCount != 300 || st.Index.ContentSize != info.ContentSize {
		t.Fatalf("StatIndex = %+v, %v", st, err)
	}

	// A second version replaces the first.
	data2, _ := f.index(t, 2, 10, all)
	if _, err := f.put(t, "images/a.caibx", data2); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.get(t, "images/a.caibx"); !bytes.Equal(got, data2) {
		t.Fatal("a second put did not replace the index")
	}

	// Listing pages through names in order.
	for i := range 5 {
		if _, err := f.put(t, fmt.Sprintf("list/%d.caidx", i), data2); err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	token := ""
	for {
		resp, err := f.catalog.ListIndexes(t.Context(), &chunkbridgev1.ListIndexesRequest{Prefix: "list/", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range resp.Indexes {
			names = append(names, i.Name)
			if i.ChunkCount != 10 {
				t.Fatalf("listed %s with %d chunks", i.Name, i.ChunkCount)
			}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if strings.Join(names, ",") != "list/0.caidx,list/1.caidx,list/2.caidx,list/3.caidx,list/4.caidx" {
		t.Fatalf("paged listing = %v", names)
	}

	if _, err := f.catalog.DeleteIndex(t.Context(), &chunkbridgev1.DeleteIndexRequest{Name: "images/a.caibx"}); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		func() error { _, err := f.get(t, "images/a.caibx"); return err }(),
		func() error {
			_, err := f.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: "images/a.caibx"})
			return err
		}(),
		func() error {
			_, err := f.catalog.DeleteIndex(t.Context(), &chunkbridgev1.DeleteIndexRequest{Name: "images/a.caibx"})
			return err
		}(),
	} {
		if status.Code(err) != codes.NotFound {
			t.Fatalf("after delete: %v, want NotFound", err)
		}
	}
}

func TestPutIndexRefusals(t *testing.T) {
	f := newFixture(t, catalog.Config{MaxIndexSize: 64 << 10})
	good, _ := f.index(t, 3, 20, all)
	partial, ids := f.index(t, 4, 20, func(i int) bool { return i%2 == 0 })
	big, _ := f.index(t, 5, 2000, all) // 80 KiB: over the limit
	truncated := good[:len(good)-7]
	for _, tc := range []struct {
		name, index string
		data        []byte
		code        codes.Code
		says        string
	}{
		{"missing chunks", "p.caibx", partial, codes.FailedPrecondition, fmt.Sprintf("%x", ids[1])},
		{"truncated", "t.caibx", truncated, codes.InvalidArgument, "index"},
		{"not an index", "n.caibx", []byte("hello"), codes.InvalidArgument, "index"},
		{"too large", "b.caibx", big, codes.InvalidArgument, "larger than"},
		{"dot-dot", "a/../../b.caibx", good, codes.InvalidArgument, ".."},
		{"empty segment", "a//b.caibx", good, codes.InvalidArgument, "segment"},
		{"wrong suffix", "a.txt", good, codes.InvalidArgument, ".caibx"},
		{"snapshot space", "snapshots/host/x.caibx", good, codes.InvalidArgument, "reserved"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.put(t, tc.index, tc.data)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Fatalf("PutIndex = %v, want %v mentioning %q", err, tc.code, tc.says)
			}
			if _, err := f.get(t, tc.index); status.Code(err) == codes.OK {
				t.Fatal("a refused index is visible")
			}
		})
	}
}
