package admin_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

func TestStats(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			e := newEnv(t, st.open(t), admin.Config{Registerer: reg, StatsTTL: time.Millisecond})
			a := makeBlobs(1, 6, 1000, sha256Alg)
			b := makeBlobs(2, 4, 1000, sha512Alg)
			e.upload(t, a, b)
			e.mustPutIndex(t, "a.caibx", concat(a, a)) // every chunk twice
			e.mustPutIndex(t, "b.caibx", b)
			e.mustWriteSnapshot(t, "vm", "1", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), "disk", a[:3])
			e.mustWriteSnapshot(t, "vm", "1", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), "disk", a[:3])
			e.mustWriteSnapshot(t, "vm", "1", time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC), "other", a[3:])
			var logical, referenced, stored int64
			for _, x := range concat(a, b) {
				logical += int64(len(x.data))
				info, _ := e.store.Stat(t.Context(), x.id.Key())
				stored += info.Size
			}
			for _, x := range concat(a, a, b, a[:3], a[:3], a[3:]) {
				referenced += int64(len(x.data))
			}
			s, err := e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if s.ChunkCount != 10 || s.StoredBytes != stored || s.LogicalBytes != logical || s.ReferencedBytes != referenced ||
				s.CasyncIndexes != 2 || s.Snapshots != 2 || s.SnapshotFiles != 3 || s.BackupGroups != 1 || s.ChunksWithoutSize != 0 ||
				s.ChunksWritten != 10 {
				t.Fatalf("GetStats = %v; want 10 chunks, %d stored, %d logical, %d referenced bytes", s, stored, logical, referenced)
			}
			if want := float64(referenced) / float64(logical); s.DedupRatio != want || s.CompressionRatio != float64(logical)/float64(stored) {
				t.Fatalf("dedup ratio %v (want %v), compression %v", s.DedupRatio, want, s.CompressionRatio)
			}
			// A chunk casync itself put there, with no recorded size, is read
			// to be counted.
			raw := []byte(strings.Repeat("placed by casync ", 20))
			id := sum(sha512Alg, raw)
			enc, _ := zstd.NewWriter(nil)
			frame := enc.EncodeAll(raw, nil)
			if err := e.store.Put(t.Context(), id.Key(), strings.NewReader(string(frame)), int64(len(frame)), nil); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // past the TTL
			s, err = e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
			if err != nil || s.ChunkCount != 11 || s.ChunksWithoutSize != 1 || s.LogicalBytes != logical+int64(len(raw)) {
				t.Fatalf("GetStats with a casync chunk = %v, %v", s, err)
			}
			// The same figures as Prometheus gauges.
			families, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			gauges := map[string]float64{}
			for _, f := range families {
				if len(f.GetMetric()) == 1 && f.GetMetric()[0].GetGauge() != nil {
					gauges[f.GetName()] = f.GetMetric()[0].GetGauge().GetValue()
				}
			}
			for name, want := range map[string]float64{
				"chunkbridge_store_chunks": 11, "chunkbridge_store_logical_bytes": float64(s.LogicalBytes),
				"chunkbridge_store_dedup_ratio": s.DedupRatio, "chunkbridge_catalog_casync_indexes": 2,
				"chunkbridge_catalog_snapshots": 2, "chunkbridge_catalog_snapshot_files": 3,
			} {
				if got, ok := gauges[name]; !ok || got != want {
					t.Errorf("gauge %s = %v (present %v), want %v", name, got, ok, want)
				}
			}
		})
	}
}

// outageStore fails every listing with ErrUnavailable while down.
type outageStore struct {
	storage.Store
	down atomic.Bool
}

func (s *outageStore) List(ctx context.Context, prefix string, fn func(storage.Info) error) error {
	if s.down.Load() {
		return fmt.Errorf("list %s: %w: connection refused", prefix, storage.ErrUnavailable)
	}
	return s.Store.List(ctx, prefix, fn)
}

// During an outage GetStats serves the last count, saying it is stale and
// why, instead of passing old figures for current ones.
func TestStatsStaleDuringOutage(t *testing.T) {
	st := &outageStore{Store: memory.New()}
	// A TTL of 1ns: every call counts again, unless storage is down.
	e := newEnv(t, st, admin.Config{StatsTTL: time.Nanosecond})
	st.down.Store(true)
	if _, err := e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetStats with no earlier count during an outage: %v; want UNAVAILABLE", err)
	}
	st.down.Store(false)
	e.upload(t, makeBlobs(1, 3, 1000, sha256Alg))
	fresh, err := e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
	if err != nil || fresh.StaleReason != "" || fresh.ChunkCount != 3 {
		t.Fatalf("GetStats = %v, %v; want 3 chunks, not stale", fresh, err)
	}
	st.down.Store(true)
	stale, err := e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
	if err != nil || stale.ChunkCount != 3 || stale.CountedAt != fresh.CountedAt ||
		!strings.Contains(stale.StaleReason, "storage unavailable") || !strings.Contains(stale.StaleReason, "last count") {
		t.Fatalf("GetStats during an outage = %v, %v; want the last count, labelled stale", stale, err)
	}

	// With the health probe's verdict, a count still within its TTL is
	// labelled too.
	st2 := &outageStore{Store: memory.New()}
	e2 := newEnv(t, st2, admin.Config{StatsTTL: time.Hour, Ready: func() bool { return !st2.down.Load() }})
	if s, err := e2.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{}); err != nil || s.StaleReason != "" {
		t.Fatalf("GetStats = %v, %v", s, err)
	}
	st2.down.Store(true)
	if s, err := e2.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{}); err != nil || !strings.Contains(s.StaleReason, "health probe fails") {
		t.Fatalf("GetStats while the health probe fails = %v, %v; want it labelled stale", s, err)
	}
}
