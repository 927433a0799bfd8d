package catalog_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

func scan(t *testing.T, cat *catalog.Server, r catalog.Referrer) ([]chunk.ID, error) {
	var ids []chunk.ID
	err := cat.ScanReferrer(t.Context(), r, func(id chunk.ID) error { ids = append(ids, id); return nil })
	return ids, err
}

func TestReferrersAndSummary(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	a, aIDs := f.index(t, 1, 50, all)
	b, bIDs := f.index(t, 2, 3, all)
	for name, data := range map[string][]byte{"x/a.caibx": a, "b.caidx": b} {
		if _, err := f.put(t, name, data); err != nil {
			t.Fatal(err)
		}
	}
	d1 := f.storeChunk(t, []byte("one"))
	d2 := f.storeChunk(t, []byte("two!"))
	for _, ts := range []string{"2026-11-24T10:00:00Z", "2026-11-25T10:00:00Z"} {
		res := f.write(t, &Create{Type: "host", BackupId: "h", Time: at(ts), Name: "root.pxar"}, []*Entry{{Offset: 0, Digest: d1}, {Offset: 3, Digest: d2}, {Offset: 7, Digest: d1}}, true)
		if res.err != nil {
			t.Fatal(res.err)
		}
	}
	res := f.write(t, &Create{Type: "vm", BackupId: "1", Time: at("2026-11-25T10:00:00Z"), Name: "disk", Fixed: true, ChunkSize: 3, FileSize: 3}, []*Entry{{Slot: 0, Digest: d1}}, true)
	if res.err != nil {
		t.Fatal(res.err)
	}
	// Not a snapshot file: ignored.
	f.store.Put(t.Context(), "snapshots/stray", strings.NewReader("x"), 1, nil)

	var refs []catalog.Referrer
	if err := f.server.ListReferrers(t.Context(), func(r catalog.Referrer) error { refs = append(refs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []catalog.Referrer{
		{Name: "indexes/b.caidx", Tenant: "default"}, {Name: "indexes/x/a.caibx", Tenant: "default"},
		{Name: "snapshots/host/h/2026-11-24T10:00:00Z/root.pxar.didx", Snapshot: true, Tenant: "default"},
		{Name: "snapshots/host/h/2026-11-25T10:00:00Z/root.pxar.didx", Snapshot: true, Tenant: "default"},
		{Name: "snapshots/vm/1/2026-11-25T10:00:00Z/disk.fidx", Snapshot: true, Tenant: "default"},
	}
	if !slices.Equal(refs, want) {
		t.Fatalf("ListReferrers = %v, want %v", refs, want)
	}
	toIDs := func(in [][32]byte) (out []chunk.ID) {
		for _, x := range in {
			out = append(out, chunk.ID(x))
		}
		return out
	}
	for _, tc := range []struct {
		ref  catalog.Referrer
		want []chunk.ID
	}{
		{want[0], toIDs(bIDs)},
		{want[1], toIDs(aIDs)},
		{want[2], []chunk.ID{sha256.Sum256([]byte("one")), sha256.Sum256([]byte("two!")), sha256.Sum256([]byte("one"))}},
		{want[4], []chunk.ID{sha256.Sum256([]byte("one"))}},
	} {
		if got, err := scan(t, f.server, tc.ref); err != nil || !slices.Equal(got, tc.want) {
			t.Fatalf("ScanReferrer(%s) = %d ids, %v; want %d", tc.ref.Name, len(got), err, len(tc.want))
		}
	}
	sum, per, err := f.server.Summary(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if sum.CasyncIndexes != 2 || sum.SnapshotFiles != 3 || sum.Snapshots != 3 || sum.BackupGroups != 2 || sum.ContentBytes == 0 {
		t.Fatalf("Summary = %+v", sum)
	}
	if len(per) != 1 || per["default"] != sum {
		t.Fatalf("Summary per tenant = %+v; want the default tenant's, all of it", per)
	}

	// A file deleted meanwhile, a malformed one, and one that breaks off
	// with a storage outage are told apart.
	if _, err := scan(t, f.server, catalog.Referrer{Name: "indexes/gone.caibx"}); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("ScanReferrer(deleted) = %v, want NotFound", err)
	}
	f.store.Put(t.Context(), "indexes/bad.caibx", strings.NewReader("not an index"), 12, nil)
	if _, err := scan(t, f.server, catalog.Referrer{Name: "indexes/bad.caibx"}); !errors.Is(err, apierr.ErrInvalid) {
		t.Fatalf("ScanReferrer(malformed) = %v, want ErrInvalid", err)
	}
	broken := &failingStore{Store: f.store, after: 100}
	cat, _ := catalog.New(broken, f.chunks, catalog.Config{SpoolDir: t.TempDir()})
	for _, r := range []catalog.Referrer{want[1], want[2]} {
		_, err := scan(t, cat, r)
		if !errors.Is(err, storage.ErrUnavailable) || errors.Is(err, apierr.ErrInvalid) {
			t.Fatalf("ScanReferrer(%s) with an outage mid-file = %v, want ErrUnavailable only", r.Name, err)
		}
	}
}

// failingStore's readers fail with ErrUnavailable after some bytes.
type failingStore struct {
	storage.Store
	after int
}

func (s *failingStore) Get(ctx context.Context, key string) (io.ReadCloser, storage.Info, error) {
	rc, info, err := s.Store.Get(ctx, key)
	if err != nil {
		return nil, info, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, int64(s.after)), errorReader{}), rc}, info, nil
}

type errorReader struct{}

func (errorReader) Read([]byte) (int, error) {
	return 0, fmt.Errorf("connection reset: %w", storage.ErrUnavailable)
}

// A commit during a GC run registers its chunks with the run.
func TestCommitDuringGCIsKept(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	run, err := f.server.Guard().Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer run.End(t.Context())
	data, ids := f.index(t, 1, 5, all)
	if _, err := f.put(t, "during.caibx", data); err != nil {
		t.Fatal(err)
	}
	d := f.storeChunk(t, []byte("snap"))
	if res := f.write(t, &Create{Type: "ct", BackupId: "1", Name: "f"}, []*Entry{{Offset: 0, Digest: d}}, true); res.err != nil {
		t.Fatal(res.err)
	}
	err = run.Check(t.Context(), func(protected func(chunk.ID) bool) {
		for _, id := range append(ids, sha256.Sum256([]byte("snap"))) {
			if !protected(chunk.ID(id)) {
				t.Errorf("chunk %x of a commit during GC is not protected", id)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// When a GC delete batch wins the race against a commit that has already
// checked its chunks, the commit fails clearly and publishes nothing.
func TestDeleteThatWinsTurnsCommitIntoError(t *testing.T) {
	waiting := make(chan struct{}, 1)
	store := memory.New()
	guard := gcguard.New(store, gcguard.Config{Hooks: gcguard.Hooks{Waiting: func(gcguard.State) {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}}})
	f := newFixtureOn(t, store, catalog.Config{Guard: guard})
	data, ids := f.index(t, 1, 5, all)
	victim := chunk.ID(ids[3])
	d := f.storeChunk(t, []byte("doomed"))
	doomed := chunk.ID(sha256.Sum256([]byte("doomed")))
	for _, tc := range []struct {
		name   string
		victim chunk.ID
		commit func() error
		gone   func() error
	}{
		{"casync index", victim,
			func() error { _, err := f.put(t, "raced.caibx", data); return err },
			func() error { _, err := f.get(t, "raced.caibx"); return err }},
		{"snapshot file", doomed,
			func() error {
				return f.write(t, &Create{Type: "ct", BackupId: "2", Time: at("2026-01-01T00:00:00Z"), Name: "f"}, []*Entry{{Offset: 0, Digest: d}}, true).err
			},
			func() error { _, err := f.digests(t, "ct/2/2026-01-01T00:00:00Z/f.didx"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run, err := f.server.Guard().Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer run.End(t.Context())
			result := make(chan error, 1)
			err = run.Delete(t.Context(), func(ctx context.Context, protected func(chunk.ID) bool) error {
				go func() { result <- tc.commit() }()
				// The commit has checked its chunks (all present),
				// registered after this batch listed, and now waits.
				<-waiting
				if protected(tc.victim) {
					t.Error("the batch sees a commit that did not register yet")
				}
				f.chunks.Forget(tc.victim)
				return f.store.Delete(ctx, tc.victim.Key())
			})
			if err != nil {
				t.Fatal(err)
			}
			err = <-result
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "garbage collection deleted 1") || !strings.Contains(err.Error(), tc.victim.String()) {
				t.Fatalf("commit that lost the race = %v, want FailedPrecondition naming %s", err, tc.victim)
			}
			if err := tc.gone(); status.Code(err) != codes.NotFound {
				t.Fatalf("the refused file is visible: %v", err)
			}
		})
	}
}
