package catalog_test

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
)

// Blob uploads beyond MaxBlobSpools wait for a spool: the second waits
// until the first is stored, then is stored too; one whose call ends
// while it waits is refused and holds none.
func TestBlobSpoolsBounded(t *testing.T) {
	f := newFixture(t, catalog.Config{MaxBlobSpools: 1})
	spools := catalog.BlobSpools(f.server)
	waiting, held := make(chan struct{}, 8), make(chan struct{}, 8)
	waited := make(chan error, 8)
	catalog.OnBlobSpool(t, func() { waiting <- struct{}{} }, func(err error) { waited <- err }, func() { held <- struct{}{} })

	start := func(ctx context.Context, name string) chunkbridgev1.CatalogService_PutSnapshotBlobClient {
		t.Helper()
		bs, err := f.catalog.PutSnapshotBlob(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := bs.Send(&chunkbridgev1.PutSnapshotBlobRequest{Type: "host", BackupId: "x", Time: at("2026-11-24T10:00:00Z"), Name: name, Data: []byte("first part of " + name)}); err != nil {
			t.Fatal(err)
		}
		return bs
	}
	first := start(t.Context(), "a.blob")
	servicetest.Recv(t, held, "spool of the first upload")
	second := start(t.Context(), "b.blob")
	servicetest.Recv(t, waiting, "wait of the second upload")

	ctx, cancel := context.WithCancel(t.Context())
	third := start(ctx, "c.blob")
	servicetest.Recv(t, waiting, "wait of the third upload")
	cancel()
	if err := servicetest.Recv(t, waited, "end of the third's wait"); !errors.Is(err, context.Canceled) {
		t.Fatalf("the third's wait ended with %v, want canceled", err)
	}
	if _, err := third.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Fatalf("the canceled upload = %v", err)
	}
	if n := spools.InUse(); n != 1 {
		t.Fatalf("%d spools held with one upload under way", n)
	}

	for _, bs := range []chunkbridgev1.CatalogService_PutSnapshotBlobClient{first, second} {
		bs.Send(&chunkbridgev1.PutSnapshotBlobRequest{Data: []byte(" and the rest")})
		if _, err := bs.CloseAndRecv(); err != nil {
			t.Fatalf("a waiting upload was not stored in turn: %v", err)
		}
	}
	if err := servicetest.Recv(t, waited, "end of the second's wait"); err != nil {
		t.Fatalf("the second's wait ended with %v", err)
	}
	if spools.Peak() != 1 || spools.InUse() != 0 {
		t.Fatalf("spools: peak %d, %d still held; want 1 and 0", spools.Peak(), spools.InUse())
	}
	if n := len(f.keys(t, "snapshots/")); n != 2 {
		t.Fatalf("%d blob files stored, want 2", n)
	}
}
