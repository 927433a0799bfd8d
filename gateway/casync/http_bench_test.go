package casync_test

import (
	"crypto/sha512"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	cbclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/fs"
)

// BenchmarkHTTPGetChunk is casync-http's access pattern: one 64 KiB chunk
// GET after another on a kept-alive connection, from a directory store.
func BenchmarkHTTPGetChunk(b *testing.B) {
	store, err := fs.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	svcs := servicetest.Start(b, store, chunk.Config{}, catalog.Config{})
	var paths []string
	for i := range 64 {
		data := make([]byte, 64<<10)
		data[0], data[1] = byte(i), 1
		sum := sha512.Sum512_256(data)
		id := hex.EncodeToString(sum[:])
		if _, err := svcs.Chunks.Put(b.Context(), chunk.Upload{ID: sum, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, "/chunks/"+id[:4]+"/"+id+".cacnk")
	}
	for _, tr := range []struct {
		name   string
		chunks *cbclient.Chunks
	}{{"grpc", cbclient.NewGRPC(svcs.Conn)}, {"local", cbclient.NewLocal(svcs.Chunks, 0)}} {
		b.Run(tr.name, func(b *testing.B) { getChunks(b, tr.chunks, svcs, paths) })
	}
}

func getChunks(b *testing.B, chunks *cbclient.Chunks, svcs *servicetest.Services, paths []string) {
	srv := httptest.NewServer(&casync.HTTPStore{Chunks: chunks, Catalog: cbclient.NewCatalogGRPC(svcs.Conn)})
	defer srv.Close()
	b.ResetTimer()
	for i := range b.N {
		resp, err := http.Get(srv.URL + paths[i%len(paths)])
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}
