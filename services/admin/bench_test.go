package admin_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// TestGCVerifyThroughput measures garbage collection, verification and
// counting on a store of many small chunks. It is a measurement, not a
// test, and runs only with CHUNKBRIDGE_GC_BENCH=1:
//
//	CHUNKBRIDGE_GC_BENCH=1 go test -run GCVerifyThroughput -v -timeout 60m ./services/admin/
//
// CHUNKBRIDGE_GC_BENCH_CHUNKS (default 100000) and CHUNKBRIDGE_GC_BENCH_STORES
// (default "minio"; also "fs", "memory") change the size and the stores.
// CHUNKBRIDGE_GC_BENCH_VERIFY_WORKERS sets admin.Config.VerifyWorkers.
// Half of the chunks are referenced by one casync index, so the collection
// deletes the other half.
func TestGCVerifyThroughput(t *testing.T) {
	if os.Getenv("CHUNKBRIDGE_GC_BENCH") != "1" {
		t.Skip("a measurement: set CHUNKBRIDGE_GC_BENCH=1")
	}
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("CHUNKBRIDGE_GC_BENCH_CHUNKS")); err == nil && v > 0 {
		n = v
	}
	names := "minio"
	if v := os.Getenv("CHUNKBRIDGE_GC_BENCH_STORES"); v != "" {
		names = v
	}
	for _, st := range stores {
		if !strings.Contains(names, st.name) {
			continue
		}
		t.Run(st.name, func(t *testing.T) { measure(t, st.open(t), n) })
	}
}

func measure(t *testing.T, store storage.Store, n int) {
	var cfg admin.Config
	cfg.VerifyWorkers, _ = strconv.Atoi(os.Getenv("CHUNKBRIDGE_GC_BENCH_VERIFY_WORKERS"))
	e := newEnv(t, store, cfg)
	ctx := context.Background()
	rate := func(what string, took time.Duration, chunks int, bytes int64) {
		mb := float64(bytes) / 1e6 / took.Seconds()
		t.Logf("%-34s %8.2fs %9.0f chunks/s %8.1f MB/s", what, took.Seconds(), float64(chunks)/took.Seconds(), mb)
	}

	// Upload n chunks of 1 KiB of random data, 32 at a time.
	ids := make([]chunk.ID, n)
	sizes := make([]int, n)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			data := make([]byte, 1024)
			rand.Read(data)
			ids[i], sizes[i] = sha256.Sum256(data), len(data)
			_, err := e.chunks.Put(gctx, chunk.Upload{ID: ids[i], Algorithm: sha256Alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	rate(fmt.Sprintf("upload %d × 1 KiB", n), time.Since(start), n, int64(n)*1024)

	// One index references every other chunk.
	half := make([]blob, 0, n/2)
	for i := 0; i < n; i += 2 {
		half = append(half, blob{id: ids[i], alg: sha256Alg, data: make([]byte, sizes[i])})
	}
	start = time.Now()
	e.mustPutIndex(t, "half.caibx", half)
	t.Logf("%-34s %8.2fs", fmt.Sprintf("publish an index of %d chunks", len(half)), time.Since(start).Seconds())

	start = time.Now()
	st, err := e.adm.GetStats(ctx, &chunkbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rate("stats (count, logical bytes)", time.Since(start), int(st.ChunkCount), st.StoredBytes)

	start = time.Now()
	rep, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
	if rep.ChunksVerified != int64(n) || len(rep.Problems) != 0 {
		t.Fatalf("verify: %v", rep)
	}
	took := time.Since(start)
	rate("verify (read, decode, re-hash)", took, int(rep.ChunksVerified), rep.BytesRead)
	t.Logf("%-34s %8s %9s %8.1f MB/s logical", "", "", "", float64(rep.LogicalBytesRead)/1e6/took.Seconds())

	start = time.Now()
	dry := e.gc(t, 0, true)
	rate("gc dry run (mark + list)", time.Since(start), int(dry.ChunksScanned), dry.BytesScanned)

	start = time.Now()
	r := e.gc(t, 0, false)
	took = time.Since(start)
	if r.ChunksDeleted != int64(n-len(half)) {
		t.Fatalf("gc deleted %d, want %d", r.ChunksDeleted, n-len(half))
	}
	rate(fmt.Sprintf("gc deleting %d", r.ChunksDeleted), took, int(r.ChunksScanned), r.BytesScanned)
	rate("  of which deletes", took, int(r.ChunksDeleted), r.BytesDeleted)

	start = time.Now()
	r = e.gc(t, 0, false)
	rate("gc with nothing to delete", time.Since(start), int(r.ChunksScanned), r.BytesScanned)
	t.Logf("GOMAXPROCS %d", runtime.GOMAXPROCS(0))
}
