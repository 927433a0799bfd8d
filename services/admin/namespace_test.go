package admin_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/services/quota"
)

func (e *env) mustWriteNSSnapshot(t testing.TB, ns, id string, when time.Time, blobs []blob) {
	t.Helper()
	create := &chunkbridgev1.WriteSnapshotFileRequest_Create{Namespace: ns, Type: "host", BackupId: id, Time: timestamppb.New(when), Name: "root.pxar"}
	if err := e.writeSnapshotFile(t.Context(), create, blobs); err != nil {
		t.Fatalf("snapshot in %q: %v", ns, err)
	}
}

func (e *env) createNS(t testing.TB, ns string) {
	t.Helper()
	if _, err := e.catalog.CreateNamespace(t.Context(), &chunkbridgev1.CreateNamespaceRequest{Namespace: ns}); err != nil {
		t.Fatal(err)
	}
}

// TestGCKeepsNamespacedSnapshots: chunks only a namespaced snapshot
// references survive a collection with no grace, read back, and verify
// finds them; an unreferenced chunk goes.
func TestGCKeepsNamespacedSnapshots(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			deep := makeBlobs(11, 4, 1024, sha256Alg)
			shallow := makeBlobs(12, 3, 1024, sha256Alg)
			orphans := makeBlobs(13, 2, 1024, sha256Alg)
			e.upload(t, deep, shallow, orphans)
			e.createNS(t, "a/b/c/d/e/f/g")
			e.mustWriteNSSnapshot(t, "a/b/c/d/e/f/g", "x", day(24), deep)
			e.mustWriteNSSnapshot(t, "a", "x", day(24), shallow)
			r := e.gc(t, 0, false)
			if r.ChunksDeleted != int64(len(orphans)) || r.IndexFiles != 2 {
				t.Fatalf("GC: %v; want %d deleted, 2 index files", r, len(orphans))
			}
			for _, b := range concat(deep, shallow) {
				e.readsBack(t, b)
			}
			rep, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			if rep.GetMissing() != 0 || rep.GetIndexFiles() != 2 || len(rep.GetDamagedFiles()) != 0 {
				t.Fatalf("verify after GC: %v", rep)
			}
		})
	}
}

// TestGCRefusesUnknownSnapshotFile: a .didx under snapshots/ that this
// version cannot parse stops GC before it deletes anything.
func TestGCRefusesUnknownSnapshotFile(t *testing.T) {
	e := newEnv(t, memoryStore(t), admin.Config{})
	orphans := makeBlobs(14, 2, 512, sha256Alg)
	e.upload(t, orphans)
	key := "snapshots/ns/a/zz/host/x/2026-11-24T10:00:00Z/root.pxar.didx"
	if err := e.store.Put(t.Context(), key, strings.NewReader("x"), 1, nil); err != nil {
		t.Fatal(err)
	}
	_, err := e.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{Grace: durationpb.New(0)})
	if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("RunGC with an unknown snapshot file = %v", err)
	}
	for _, b := range orphans {
		if !e.exists(t, b.id) {
			t.Fatal("GC deleted a chunk though it could not read every snapshot file")
		}
	}
}

// TestPruneNamespacesApart: the same type and id in the root and in a are
// two groups; a prune of a leaves the root's alone, and a prune of every
// tenant covers every namespace.
func TestPruneNamespacesApart(t *testing.T) {
	e := newEnv(t, memoryStore(t), admin.Config{})
	bs := makeBlobs(15, 6, 512, sha256Alg)
	e.upload(t, bs)
	e.createNS(t, "a")
	for i, d := range []int{20, 21, 22} {
		e.mustWriteNSSnapshot(t, "", "x", day(d), bs[i:i+1])
		e.mustWriteNSSnapshot(t, "a", "x", day(d).Add(time.Hour), bs[3+i:4+i])
	}
	list := func() (out []string) {
		resp, err := e.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{MaxDepth: 7})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Snapshots {
			out = append(out, s.Namespace+":"+s.Time.AsTime().Format("02"))
		}
		return out
	}
	// Keep-last 2 of a: one goes; merged with the root's, 4 would.
	resp, err := e.adm.Prune(t.Context(), &chunkbridgev1.PruneRequest{KeepLast: 2, Tenant: "default", Namespace: "a", Type: "host", BackupId: "x"})
	if err != nil || resp.Removed != 1 || resp.Kept != 2 || resp.Decisions[2].Namespace != "a" {
		t.Fatalf("prune of a: %v, %v", resp, err)
	}
	if got, want := list(), []string{":22", ":21", ":20", "a:22", "a:21"}; !slices.Equal(got, want) {
		t.Fatalf("after prune of a: %v, want %v", got, want)
	}
	// Every tenant, every namespace: keep-last 1 per group.
	resp, err = e.adm.Prune(t.Context(), &chunkbridgev1.PruneRequest{KeepLast: 1})
	if err != nil || resp.Removed != 3 || resp.Kept != 2 {
		t.Fatalf("prune of all: %v, %v", resp, err)
	}
	if got, want := list(), []string{":22", "a:22"}; !slices.Equal(got, want) {
		t.Fatalf("after prune of all: %v, want %v", got, want)
	}
	if _, err := e.adm.Prune(t.Context(), &chunkbridgev1.PruneRequest{KeepLast: 1, Tenant: "default", Namespace: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("prune of a missing namespace = %v", err)
	}
}

// TestNamespacesPerTenant: a tenant's namespaces are inside its own view:
// another tenant neither lists them nor writes into them, and GC keeps
// each tenant's namespaced snapshots' chunks.
func TestNamespacesPerTenant(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			ctx := t.Context()
			bs := makeBlobs(16, 3, 512, sha256Alg)
			e.uploadAs(t, acmeWriter, bs)
			if _, err := e.catalog.CreateNamespace(as(ctx, acmeWriter), &chunkbridgev1.CreateNamespaceRequest{Namespace: "a"}); err != nil {
				t.Fatal(err)
			}
			create := &chunkbridgev1.WriteSnapshotFileRequest_Create{Namespace: "a", Type: "host", BackupId: "x", Time: timestamppb.New(day(24)), Name: "root.pxar"}
			if err := e.writeSnapshotFile(as(ctx, acmeWriter), create, bs); err != nil {
				t.Fatal(err)
			}
			if resp, err := e.catalog.ListNamespaces(as(ctx, globex), &chunkbridgev1.ListNamespacesRequest{}); err != nil || !slices.Equal(resp.GetNamespaces(), []string{""}) {
				t.Fatalf("globex lists namespaces %v, %v", resp.GetNamespaces(), err)
			}
			if _, err := e.catalog.ListSnapshots(as(ctx, globex), &chunkbridgev1.ListSnapshotsRequest{Namespace: "a"}); status.Code(err) != codes.NotFound {
				t.Fatalf("globex lists acme's a: %v", err)
			}
			if err := e.writeSnapshotFile(as(ctx, globex), create, nil); status.Code(err) != codes.NotFound {
				t.Fatalf("globex writes into a: %v", err)
			}
			if resp, err := e.catalog.ListNamespaces(as(ctx, acmeWriter), &chunkbridgev1.ListNamespacesRequest{}); err != nil || !slices.Equal(resp.GetNamespaces(), []string{"", "a"}) {
				t.Fatalf("acme lists namespaces %v, %v", resp.GetNamespaces(), err)
			}
			if r := e.gc(t, 0, false); r.ChunksDeleted != 0 {
				t.Fatalf("GC deleted %d of acme's namespaced chunks", r.ChunksDeleted)
			}
			for _, b := range bs {
				e.readsBackAs(t, acmeWriter, b)
			}
		})
	}
}

// TestNamespacedSnapshotsCountInQuota: a namespaced snapshot's bytes are
// the tenant's logical usage, like the root's: after a snapshot in a
// fills the quota, another in the root is refused.
func TestNamespacedSnapshotsCountInQuota(t *testing.T) {
	first := makeBlobs(17, 4, 1024, sha256Alg)
	more := makeBlobs(18, 4, 1024, sha256Alg)
	book := quota.New(func(tenant string) (int64, int64) {
		if tenant == "globex" {
			return size(first) + 100, 0
		}
		return 0, 0
	}, time.Hour)
	e := newEnvQuota(t, memoryStore(t), admin.Config{}, gcguard.Config{}, book)
	ctx := as(t.Context(), globex)
	e.uploadAs(t, globex, first, more)
	if _, err := e.catalog.CreateNamespace(ctx, &chunkbridgev1.CreateNamespaceRequest{Namespace: "a"}); err != nil {
		t.Fatal(err)
	}
	create := &chunkbridgev1.WriteSnapshotFileRequest_Create{Namespace: "a", Type: "host", BackupId: "x", Time: timestamppb.New(day(24)), Name: "root.pxar"}
	if err := e.writeSnapshotFile(ctx, create, first); err != nil {
		t.Fatal(err)
	}
	if err := e.writeSnapshot(ctx, "host", "x", day(25), "root.pxar", more); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a root snapshot past the quota a's snapshot filled: %v", err)
	}
}
