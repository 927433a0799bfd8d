package catalog_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/storage"
)

func (f *fixture) createNS(t *testing.T, ns string) {
	t.Helper()
	if _, err := f.catalog.CreateNamespace(t.Context(), &chunkbridgev1.CreateNamespaceRequest{Namespace: ns}); err != nil {
		t.Fatalf("create namespace %q: %v", ns, err)
	}
}

func (f *fixture) listNS(t *testing.T, parent string, depth *int32) ([]string, error) {
	t.Helper()
	resp, err := f.catalog.ListNamespaces(t.Context(), &chunkbridgev1.ListNamespacesRequest{Parent: parent, MaxDepth: depth})
	return resp.GetNamespaces(), err
}

func (f *fixture) keys(t *testing.T, prefix string) []string {
	t.Helper()
	var out []string
	if err := f.store.List(t.Context(), prefix, func(i storage.Info) error { out = append(out, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCheckNamespace(t *testing.T) {
	for _, ok := range []string{"", "a", "a/b", "_x.y-z", "ns", "vm/ct/host", "1/2/3/4/5/6/7", strings.Repeat("a", 32), strings.Repeat(strings.Repeat("a", 32)+"/", 6) + strings.Repeat("b", 32)} {
		if err := catalog.CheckNamespace(ok); err != nil {
			t.Errorf("CheckNamespace(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"/", "a/", "/a", "a//b", ".a", "-a", "a b", "a/../b", "1/2/3/4/5/6/7/8", strings.Repeat("a", 33), "ä"} {
		if err := catalog.CheckNamespace(bad); err == nil {
			t.Errorf("CheckNamespace(%q) accepted", bad)
		}
	}
}

// TestNamespaces: a namespace's snapshots live under snapshots/ns/…,
// listings keep namespaces apart unless asked for depth, a missing
// namespace refuses writes, deleting a non-empty one needs delete_groups,
// and casync's HTTP store reads a namespaced file as a .caibx.
func TestNamespaces(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	d1 := f.storeChunk(t, []byte("one"))
	d2 := f.storeChunk(t, []byte("two!"))
	write := func(ns, id, ts string) writeResult {
		t.Helper()
		return f.write(t, &Create{Namespace: ns, Type: "host", BackupId: id, Time: at(ts), Name: "root.pxar"}, []*Entry{{Offset: 0, Digest: d1}, {Offset: 3, Digest: d2}}, true)
	}
	// A backup into a missing namespace is refused, and stores nothing.
	if res := write("a", "x", "2026-11-24T10:00:00Z"); status.Code(res.err) != codes.NotFound || !strings.Contains(res.err.Error(), "namespace") {
		t.Fatalf("write into a missing namespace = %v", res.err)
	}
	bs, err := f.catalog.PutSnapshotBlob(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	bs.Send(&chunkbridgev1.PutSnapshotBlobRequest{Namespace: "a", Type: "host", BackupId: "x", Time: at("2026-11-24T10:00:00Z"), Name: "index.json.blob", Data: []byte("x")})
	if _, err := bs.CloseAndRecv(); status.Code(err) != codes.NotFound {
		t.Fatalf("blob into a missing namespace = %v", err)
	}
	if n := len(f.keys(t, "snapshots/")); n != 0 {
		t.Fatalf("%d keys stored for refused writes", n)
	}
	f.createNS(t, "a/b") // creates a too
	if _, err := f.catalog.CreateNamespace(t.Context(), &chunkbridgev1.CreateNamespaceRequest{Namespace: "a"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("create existing = %v", err)
	}
	for _, bad := range []string{"1/2/3/4/5/6/7/8", "a/.b", "", "a//b"} {
		if _, err := f.catalog.CreateNamespace(t.Context(), &chunkbridgev1.CreateNamespaceRequest{Namespace: bad}); err == nil {
			t.Fatalf("create %q accepted", bad)
		}
	}
	f.createNS(t, "c")
	for _, w := range []struct{ ns, id, ts, path string }{
		{"", "x", "2026-11-24T10:00:00Z", "host/x/2026-11-24T10:00:00Z/root.pxar.didx"},
		{"a", "x", "2026-11-24T11:00:00Z", "ns/a/host/x/2026-11-24T11:00:00Z/root.pxar.didx"},
		{"a/b", "y", "2026-11-24T12:00:00Z", "ns/a/ns/b/host/y/2026-11-24T12:00:00Z/root.pxar.didx"},
	} {
		res := write(w.ns, w.id, w.ts)
		if res.err != nil || res.path != w.path || res.file.GetPath() != w.path {
			t.Fatalf("write %q = %+v", w.ns, res)
		}
		if _, err := f.store.Stat(t.Context(), "snapshots/"+w.path); err != nil {
			t.Fatalf("stored at snapshots/%s: %v", w.path, err)
		}
		if got, err := f.digests(t, w.path); err != nil || !slices.Equal(got, []string{d1, d2}) {
			t.Fatalf("digests of %s = %v, %v", w.path, got, err)
		}
	}
	// Statistics and quotas count namespaced files; a group is its
	// namespace, type and id.
	if sum, _, err := f.server.Summary(t.Context()); err != nil || sum.SnapshotFiles != 3 || sum.Snapshots != 3 || sum.BackupGroups != 3 || sum.ContentBytes != 3*7 {
		t.Fatalf("Summary = %+v, %v", sum, err)
	}
	list := func(ns, typ string, depth int32) []string {
		t.Helper()
		resp, err := f.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{Namespace: ns, Type: typ, MaxDepth: depth})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, sn := range resp.GetSnapshots() {
			out = append(out, sn.GetNamespace()+":"+sn.GetBackupId())
		}
		return out
	}
	for _, tc := range []struct {
		ns, typ string
		depth   int32
		want    []string
	}{
		{"", "", 0, []string{":x"}},
		{"", "host", 0, []string{":x"}},
		{"", "", 1, []string{":x", "a:x"}},
		{"", "host", 7, []string{":x", "a:x", "a/b:y"}},
		{"a", "", 0, []string{"a:x"}},
		{"a", "", 1, []string{"a:x", "a/b:y"}},
		{"a/b", "", 0, []string{"a/b:y"}},
		{"c", "", 7, nil},
	} {
		if got := list(tc.ns, tc.typ, tc.depth); !slices.Equal(got, tc.want) {
			t.Errorf("ListSnapshots(%q, %q, depth %d) = %v, want %v", tc.ns, tc.typ, tc.depth, got, tc.want)
		}
	}
	if _, err := f.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{Namespace: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("list of a missing namespace = %v", err)
	}
	// Namespaces: the parent first, then below it by depth.
	one := int32(1)
	for _, tc := range []struct {
		parent string
		depth  *int32
		want   []string
	}{
		{"", nil, []string{"", "a", "a/b", "c"}},
		{"", &one, []string{"", "a", "c"}},
		{"a", nil, []string{"a", "a/b"}},
	} {
		if got, err := f.listNS(t, tc.parent, tc.depth); err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ListNamespaces(%q) = %v, %v; want %v", tc.parent, got, err, tc.want)
		}
	}
	// Get and delete name the namespace; the root's x is another snapshot.
	if _, err := f.catalog.GetSnapshot(t.Context(), &chunkbridgev1.GetSnapshotRequest{Namespace: "a", Type: "host", BackupId: "x", Time: "2026-11-24T11:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.catalog.GetSnapshot(t.Context(), &chunkbridgev1.GetSnapshotRequest{Type: "host", BackupId: "x", Time: "2026-11-24T11:00:00Z"}); status.Code(err) != codes.NotFound {
		t.Fatalf("root get of a's snapshot = %v", err)
	}
	// casync's HTTP store sees a namespaced file as a blob index, latest too.
	idx, err := f.get(t, "snapshots/ns/a/host/x/2026-11-24T11:00:00Z/root.pxar.caibx")
	if err != nil {
		t.Fatal(err)
	}
	if latest, err := f.get(t, "snapshots/ns/a/host/x/latest/root.pxar.caibx"); err != nil || !bytes.Equal(latest, idx) {
		t.Fatalf("latest in a = %v", err)
	}
	// A non-empty namespace is refused without delete_groups.
	if _, err := f.catalog.DeleteNamespace(t.Context(), &chunkbridgev1.DeleteNamespaceRequest{Namespace: "a"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of non-empty a = %v", err)
	}
	if _, err := f.catalog.DeleteNamespace(t.Context(), &chunkbridgev1.DeleteNamespaceRequest{Namespace: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.catalog.DeleteNamespace(t.Context(), &chunkbridgev1.DeleteNamespaceRequest{Namespace: "a", DeleteGroups: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.listNS(t, "", nil); !slices.Equal(got, []string{""}) {
		t.Fatalf("namespaces after deletes = %v", got)
	}
	if got := list("", "", 7); !slices.Equal(got, []string{":x"}) {
		t.Fatalf("snapshots after deletes = %v", got)
	}
	if _, err := f.catalog.DeleteNamespace(t.Context(), &chunkbridgev1.DeleteNamespaceRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("delete of the root = %v", err)
	}
}

// TestReferrersRefuseUnknownSnapshotFiles: a .didx under snapshots/ that
// this version cannot parse (a newer layout, say) stops the listing GC
// marks from, instead of being skipped and swept; namespaced files are
// listed.
func TestReferrersRefuseUnknownSnapshotFiles(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	d1 := f.storeChunk(t, []byte("one"))
	f.createNS(t, "a")
	if res := f.write(t, &Create{Namespace: "a", Type: "host", BackupId: "h", Time: at("2026-11-24T10:00:00Z"), Name: "root.pxar"}, []*Entry{{Offset: 0, Digest: d1}}, true); res.err != nil {
		t.Fatal(res.err)
	}
	var names []string
	err := f.server.ListReferrers(t.Context(), func(r catalog.Referrer) error { names = append(names, r.Name); return nil })
	if err != nil || !slices.Equal(names, []string{"snapshots/ns/a/host/h/2026-11-24T10:00:00Z/root.pxar.didx"}) {
		t.Fatalf("ListReferrers = %v, %v", names, err)
	}
	f.store.Put(t.Context(), "snapshots/newlayout/a/host/h/2026-11-24T10:00:00Z/root.pxar.didx", strings.NewReader("x"), 1, nil)
	err = f.server.ListReferrers(t.Context(), func(catalog.Referrer) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "snapshots/newlayout/a/host/h/2026-11-24T10:00:00Z/root.pxar.didx") || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("ListReferrers with an unknown snapshot file = %v", err)
	}
}

// TestSnapshotWriterRefusesUnparsablePaths: a client may not commit a
// snapshot file whose path the catalog cannot parse back (a 255-byte name
// plus ".didx", a time before year 0): ListReferrers refuses such a file,
// so one append-role client of any tenant would stop garbage collection
// of the whole store.
func TestSnapshotWriterRefusesUnparsablePaths(t *testing.T) {
	for name, c := range map[string]*Create{
		"long name":     {Type: "host", BackupId: "h", Time: at("2026-11-24T10:00:00Z"), Name: strings.Repeat("n", 255)},
		"negative year": {Type: "host", BackupId: "h", Time: &timestamppb.Timestamp{Seconds: -70000000000}, Name: "root.pxar"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, catalog.Config{})
			d1 := f.storeChunk(t, []byte("one"))
			res := f.write(t, c, []*Entry{{Offset: 0, Digest: d1}}, true)
			if status.Code(res.err) != codes.InvalidArgument {
				t.Errorf("write = %v, want InvalidArgument", res.err)
			}
			if err := f.server.ListReferrers(t.Context(), func(catalog.Referrer) error { return nil }); err != nil {
				t.Fatalf("ListReferrers after the write = %v: garbage collection is blocked", err)
			}
		})
	}
}
