package catalog_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/internal/budget"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
)

// Uploads beyond the spools (MaxBlobSpools, MaxIndexSpools) wait their
// turn: the second waits until the first is stored, then is stored too;
// one whose call ends while it waits is refused and holds none.
func TestSpoolsBounded(t *testing.T) {
	for _, kind := range []struct {
		name   string
		spools func(*catalog.Server) *budget.Budget
		// start begins an upload, its first message sent.
		start func(t *testing.T, f *fixture, ctx context.Context, i int) upload
		// stored is what the store holds of two uploads.
		stored func(t *testing.T, f *fixture) int
	}{
		{"blob", catalog.BlobSpools, startBlob, func(t *testing.T, f *fixture) int { return len(f.keys(t, "snapshots/")) }},
		{"index", catalog.IndexSpools, startIndex, func(t *testing.T, f *fixture) int { return len(f.keys(t, "indexes/")) }},
	} {
		t.Run(kind.name, func(t *testing.T) {
			f := newFixture(t, catalog.Config{MaxBlobSpools: 1, MaxIndexSpools: 1})
			spools := kind.spools(f.server)
			waiting, held := make(chan struct{}, 8), make(chan struct{}, 8)
			waited := make(chan error, 8)
			catalog.OnSpool(t, func() { waiting <- struct{}{} }, func(err error) { waited <- err }, func() { held <- struct{}{} })

			first := kind.start(t, f, t.Context(), 1)
			servicetest.Recv(t, held, "spool of the first upload")
			second := kind.start(t, f, t.Context(), 2)
			servicetest.Recv(t, waiting, "wait of the second upload")

			ctx, cancel := context.WithCancel(t.Context())
			third := kind.start(t, f, ctx, 3)
			servicetest.Recv(t, waiting, "wait of the third upload")
			cancel()
			if err := servicetest.Recv(t, waited, "end of the third's wait"); !errors.Is(err, context.Canceled) {
				t.Fatalf("the third's wait ended with %v, want canceled", err)
			}
			if err := third.finish(); status.Code(err) != codes.Canceled {
				t.Fatalf("the canceled upload = %v", err)
			}
			if n := spools.InUse(); n != 1 {
				t.Fatalf("%d spools held with one upload under way", n)
			}
			for _, u := range []upload{first, second} {
				if err := u.finish(); err != nil {
					t.Fatalf("a waiting upload was not stored in turn: %v", err)
				}
			}
			if err := servicetest.Recv(t, waited, "end of the second's wait"); err != nil {
				t.Fatalf("the second's wait ended with %v", err)
			}
			if spools.Peak() != 1 || spools.InUse() != 0 {
				t.Fatalf("spools: peak %d, %d still held; want 1 and 0", spools.Peak(), spools.InUse())
			}
			if n := kind.stored(t, f); n != 2 {
				t.Fatalf("%d files stored, want 2", n)
			}
		})
	}
}

// upload is a spooling call under way.
type upload interface {
	// finish sends the rest and returns the call's end.
	finish() error
}

type blobUpload struct {
	bs chunkbridgev1.CatalogService_PutSnapshotBlobClient
}

func startBlob(t *testing.T, f *fixture, ctx context.Context, i int) upload {
	t.Helper()
	bs, err := f.catalog.PutSnapshotBlob(ctx)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("b%d.blob", i)
	if err := bs.Send(&chunkbridgev1.PutSnapshotBlobRequest{Type: "host", BackupId: "x", Time: at("2026-11-24T10:00:00Z"), Name: name, Data: []byte("first part of " + name)}); err != nil {
		t.Fatal(err)
	}
	return blobUpload{bs}
}

func (u blobUpload) finish() error {
	u.bs.Send(&chunkbridgev1.PutSnapshotBlobRequest{Data: []byte(" and the rest")})
	_, err := u.bs.CloseAndRecv()
	return err
}

type indexUpload struct {
	s    chunkbridgev1.CatalogService_PutIndexClient
	rest []byte
}

func startIndex(t *testing.T, f *fixture, ctx context.Context, i int) upload {
	t.Helper()
	data, _ := f.index(t, i, 3, all)
	s, err := f.catalog.PutIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&chunkbridgev1.PutIndexRequest{Name: fmt.Sprintf("i%d.caibx", i), Data: data[:10]}); err != nil {
		t.Fatal(err)
	}
	return indexUpload{s, data[10:]}
}

func (u indexUpload) finish() error {
	u.s.Send(&chunkbridgev1.PutIndexRequest{Data: u.rest})
	_, err := u.s.CloseAndRecv()
	return err
}
