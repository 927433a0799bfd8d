package admin_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/types/known/durationpb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

// overwrite damages a stored chunk behind the store's back.
func overwrite(t *testing.T, store storage.Store, key string, data []byte) {
	storagetest.Overwrite(t, store, key, data)
}

func problemsOf(r *chunkbridgev1.VerifyReport, kind chunkbridgev1.Problem_Kind) []*chunkbridgev1.Problem {
	var out []*chunkbridgev1.Problem
	for _, p := range r.Problems {
		if p.Kind == kind {
			out = append(out, p)
		}
	}
	return out
}

// A chunk whose stored bytes no longer decode, one that decodes to the
// wrong data, and a referenced chunk that is gone are each reported with
// the files that reference them.
func TestVerifyReportsDamageWithItsReferrers(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			shared := makeBlobs(1, 8, 1024, sha256Alg)
			aOnly := makeBlobs(2, 4, 1024, sha256Alg)
			bOnly := makeBlobs(3, 4, 1024, sha256Alg)
			e.upload(t, shared, aOnly, bOnly)
			e.mustPutIndex(t, "a.caibx", concat(shared, aOnly))
			e.mustPutIndex(t, "b.caibx", concat(shared[:2], bOnly))
			snapTime := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
			e.mustWriteSnapshot(t, "host", "web-01", snapTime, "root.pxar", concat(shared[4:], shared[4:]))
			snapFile := "snapshots/host/web-01/2026-11-25T10:00:00Z/root.pxar.didx"

			clean, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			if !clean.Complete || clean.ChunksVerified != 16 || len(clean.Problems) != 0 || clean.IndexFiles != 3 || clean.ReferencedChunks != 16 {
				t.Fatalf("verify of an intact store: %v", clean)
			}

			garbled := shared[5]  // referenced by a.caibx and the snapshot
			wrongData := aOnly[1] // referenced by a.caibx only
			gone := bOnly[2]      // referenced by b.caibx only
			overwrite(t, e.store, garbled.id.Key(), []byte("this is not a zstd frame"))
			enc, _ := zstd.NewWriter(nil)
			overwrite(t, e.store, wrongData.id.Key(), enc.EncodeAll([]byte("other data"), nil))
			e.chunks.Forget(gone.id)
			if err := e.store.Delete(t.Context(), gone.id.Key()); err != nil {
				t.Fatal(err)
			}

			r, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			t.Logf("report: %v", r)
			if r.Corrupt != 2 || r.Missing != 1 || r.Unreadable != 0 || r.Unavailable != 0 || !r.Complete || r.ChunksListed != 15 {
				t.Fatalf("report: %d corrupt, %d missing, %d listed; want 2, 1, 15", r.Corrupt, r.Missing, r.ChunksListed)
			}
			corrupt := problemsOf(r, chunkbridgev1.Problem_KIND_CORRUPT)
			want := map[string][]string{
				garbled.id.String():   {"indexes/a.caibx", snapFile},
				wrongData.id.String(): {"indexes/a.caibx"},
			}
			for _, p := range corrupt {
				slices.Sort(p.ReferencedBy)
				if !slices.Equal(p.ReferencedBy, want[p.Id]) || p.Code != "DataLoss" || !strings.Contains(p.Message, p.Id) {
					t.Fatalf("corrupt chunk %s: referenced by %v (want %v), code %s, %q", p.Id, p.ReferencedBy, want[p.Id], p.Code, p.Message)
				}
			}
			missing := problemsOf(r, chunkbridgev1.Problem_KIND_MISSING)
			if len(missing) != 1 || missing[0].Id != gone.id.String() || !slices.Equal(missing[0].ReferencedBy, []string{"indexes/b.caibx"}) {
				t.Fatalf("missing: %v", missing)
			}
		})
	}
}

// flakyStore fails Get of some keys with ErrUnavailable, as an S3 outage
// or a 503 SlowDown would.
type flakyStore struct {
	storage.Store
	fail  func(key string) bool
	calls atomic.Int64
}

func (f *flakyStore) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	if f.fail(key) {
		f.calls.Add(1)
		return nil, storage.Info{}, fmt.Errorf("get %s: %w: 503 SlowDown", key, storage.ErrUnavailable)
	}
	return f.Store.Get(ctx, key)
}

// A chunk storage cannot serve is reported as unavailable (after retries),
// never as corrupt; a long outage stops the run with a resume point.
func TestVerifyTransientErrorsAreNotCorruption(t *testing.T) {
	mem := memory.New()
	blobs := makeBlobs(1, 30, 512, sha256Alg)
	slices.SortFunc(blobs, func(a, b blob) int { return bytes.Compare(a.id[:], b.id[:]) })
	flaky := &flakyStore{Store: mem, fail: func(key string) bool { return key == blobs[3].id.Key() }}
	e := newEnv(t, flaky, admin.Config{RetryBackoff: 10 * time.Millisecond})
	e.upload(t, blobs)
	e.mustPutIndex(t, "x.caibx", blobs)
	r, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
	if r.Corrupt != 0 || r.Unavailable != 1 || r.ChunksVerified != 29 || !r.Complete {
		t.Fatalf("report: %v", r)
	}
	p := r.Problems[0]
	if p.Kind != chunkbridgev1.Problem_KIND_UNAVAILABLE || p.Id != blobs[3].id.String() || p.Code != "Unavailable" || p.ReferencedBy[0] != "indexes/x.caibx" {
		t.Fatalf("problem: %v", p)
	}
	if n := flaky.calls.Load(); n != 3 {
		t.Fatalf("the unavailable chunk was tried %d times, want 3", n)
	}

	// Everything unavailable: the run stops after a streak and says where
	// to resume.
	flaky.fail = func(key string) bool { return strings.HasPrefix(key, "chunks/") }
	r, _ = e.verify(t, &chunkbridgev1.VerifyRequest{})
	if r.Corrupt != 0 || r.Complete || !strings.Contains(r.StoppedReason, "unavailable") || r.Unavailable < 20 {
		t.Fatalf("report during an outage: %v", r)
	}
}

// Resume, sample, rate limit and max duration, with either prefix split.
func TestVerifyResumeSampleAndLimits(t *testing.T) {
	for _, n := range []int{16, 256} {
		t.Run(fmt.Sprint(n), func(t *testing.T) { testVerifyResumeSampleAndLimits(t, n) })
	}
}

func testVerifyResumeSampleAndLimits(t *testing.T, prefixes int) {
	e := newEnv(t, memoryStore(t), admin.Config{VerifyWorkers: 2, ListPrefixes: prefixes})
	blobs := makeBlobs(1, 200, 256, sha256Alg)
	e.upload(t, blobs)
	slices.SortFunc(blobs, func(a, b blob) int { return bytes.Compare(a.id[:], b.id[:]) })

	half, _ := e.verify(t, &chunkbridgev1.VerifyRequest{ResumeAfter: blobs[99].id.String()})
	if half.ChunksListed != 100 || half.ChunksVerified != 100 || !half.Complete || half.LastId != blobs[199].id.String() {
		t.Fatalf("resumed after the 100th: %v", half)
	}
	sampled, _ := e.verify(t, &chunkbridgev1.VerifyRequest{Sample: 0.3})
	if sampled.ChunksListed != 200 || sampled.ChunksVerified < 20 || sampled.ChunksVerified > 120 || !sampled.Complete {
		t.Fatalf("sample 0.3 of 200 verified %d", sampled.ChunksVerified)
	}

	// About 3 s of reading at the limit, stopped after 1.2 s, then resumed.
	var total int64
	for _, b := range blobs {
		info, _ := e.store.Stat(t.Context(), b.id.Key())
		total += info.Size
	}
	rate := total / 3
	start := time.Now()
	first, progress := e.verify(t, &chunkbridgev1.VerifyRequest{RateLimit: rate, MaxDuration: durationpb.New(1200 * time.Millisecond)})
	took := time.Since(start)
	if first.Complete || first.StoppedReason != "max_duration reached" || first.LastId == "" || took > 3*time.Second {
		t.Fatalf("limited run: %v after %v", first, took)
	}
	if max := float64(rate)*took.Seconds() + 1024; float64(first.BytesRead) > max {
		t.Fatalf("read %d bytes in %v at a limit of %d/s", first.BytesRead, took, rate)
	}
	if len(progress) == 0 || progress[len(progress)-1].ChunksVerified == 0 {
		t.Fatalf("no progress messages in %v: %v", took, progress)
	}
	rest, _ := e.verify(t, &chunkbridgev1.VerifyRequest{ResumeAfter: first.LastId})
	if !rest.Complete || first.ChunksVerified+rest.ChunksVerified < 200 {
		t.Fatalf("first run verified %d up to %s, the resumed one %d: not all 200", first.ChunksVerified, first.LastId, rest.ChunksVerified)
	}
	idx := slices.IndexFunc(blobs, func(b blob) bool { return b.id.String() == first.LastId })
	if rest.ChunksListed != int64(199-idx) {
		t.Fatalf("resumed after %d of 200 listed %d", idx+1, rest.ChunksListed)
	}

	for _, bad := range []*chunkbridgev1.VerifyRequest{{Sample: 1.5}, {Sample: -1}, {RateLimit: -1}, {ResumeAfter: "xyz"}, {MaxDuration: durationpb.New(0)}} {
		stream, err := e.adm.Verify(t.Context(), bad)
		if err == nil {
			_, err = stream.Recv()
		}
		if err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
			t.Errorf("Verify(%v) = %v, want InvalidArgument", bad, err)
		}
	}
}

// A corrupt chunk found by verify is moved to quarantine (its bytes kept)
// and reads as missing; every run names the index and snapshot file that
// reference it as damaged until the chunk's data is uploaded again, which
// stores a good copy (without quarantine the upload would be skipped as
// already stored) and leaves the store clean.
func TestVerifyQuarantinesUntilHealed(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			blobs := makeBlobs(7, 6, 2048, sha256Alg)
			e.upload(t, blobs)
			e.mustPutIndex(t, "a.caibx", blobs[:4])
			e.mustPutIndex(t, "b.caibx", blobs[4:])
			e.mustWriteSnapshot(t, "vm", "100", time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), "disk.img", blobs[1:3])
			snapFile := "snapshots/vm/100/2026-11-25T10:00:00Z/disk.img.didx"
			damagedWant := []string{"indexes/a.caibx", snapFile}
			victim := blobs[2]
			rotten := []byte("bit rot, not a zstd frame")
			overwrite(t, e.store, victim.id.Key(), rotten)

			r, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			p := problemsOf(r, chunkbridgev1.Problem_KIND_CORRUPT)
			if r.Corrupt != 1 || r.Quarantined != 1 || len(p) != 1 || p[0].Id != victim.id.String() || !strings.HasPrefix(p[0].Quarantine, "quarantine/chunks/") ||
				!slices.Equal(r.DamagedFiles, damagedWant) {
				t.Fatalf("first verify: %v", r)
			}
			if e.exists(t, victim.id) {
				t.Fatal("the corrupt chunk is still in chunks/")
			}
			rc, _, err := e.store.Get(t.Context(), p[0].Quarantine)
			if err != nil {
				t.Fatal(err)
			}
			kept, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(kept, rotten) {
				t.Fatalf("quarantine kept %q, want the damaged bytes", kept)
			}

			r, _ = e.verify(t, &chunkbridgev1.VerifyRequest{})
			m := problemsOf(r, chunkbridgev1.Problem_KIND_MISSING)
			if r.Corrupt != 0 || r.Missing != 1 || r.Quarantined != 0 || len(m) != 1 || m[0].Quarantine != p[0].Quarantine ||
				!strings.Contains(m[0].Message, "bit rot") && !strings.Contains(m[0].Message, "does not decode") || !slices.Equal(r.DamagedFiles, damagedWant) {
				t.Fatalf("second verify, before healing: %v", r)
			}
			if created, err := e.chunks.Put(t.Context(), chunk.Upload{ID: victim.id, Algorithm: victim.alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: victim.data}); err != nil || !created {
				t.Fatalf("re-upload: created %v, %v; want a new good copy", created, err)
			}
			r, _ = e.verify(t, &chunkbridgev1.VerifyRequest{})
			if len(r.Problems) != 0 || len(r.DamagedFiles) != 0 || !r.Complete {
				t.Fatalf("verify after healing: %v", r)
			}
			e.readsBack(t, victim)
		})
	}
}
