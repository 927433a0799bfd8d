package admin_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/admin"
)

// day is 10:00 UTC on a day of November 2026.
func day(d int) time.Time { return time.Date(2026, 11, d, 10, 0, 0, 0, time.UTC) }

func TestPruneThenGC(t *testing.T) {
	e := newEnv(t, memoryStore(t), admin.Config{})
	shared := makeBlobs(1, 3, 512, sha256Alg)
	own := makeBlobs(2, 4, 512, sha256Alg)
	e.upload(t, shared, own)
	for i, d := range []int{25, 24, 23} {
		e.mustWriteSnapshot(t, "host", "a", day(d), "root.pxar", concat(shared, own[i:i+1]))
	}
	e.mustWriteSnapshot(t, "host", "b", day(20), "root.pxar", concat(shared, own[3:]))

	list := func() (names []string) {
		resp, err := e.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Snapshots {
			names = append(names, s.BackupId+"@"+s.Time.AsTime().Format("02"))
		}
		return names
	}
	req := &chunkbridgev1.PruneRequest{KeepLast: 1, Type: "host", BackupId: "a", DryRun: true}
	dry, err := e.adm.Prune(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if dry.Kept != 1 || dry.Removed != 2 || len(dry.Decisions) != 3 || !dry.Decisions[0].Keep || dry.Decisions[1].Removed {
		t.Fatalf("dry run: %v", dry)
	}
	if got := list(); len(got) != 4 {
		t.Fatalf("a dry run removed snapshots: %v", got)
	}
	req.DryRun = false
	resp, err := e.adm.Prune(t.Context(), req)
	if err != nil || resp.Removed != 2 || resp.Failed != 0 || !resp.Decisions[1].Removed || !resp.Decisions[2].Removed {
		t.Fatalf("prune: %v, %v", resp, err)
	}
	if got := list(); len(got) != 2 || got[0] != "a@25" || got[1] != "b@20" {
		t.Fatalf("after prune: %v", got)
	}
	// The chunks only the removed snapshots used go at the next GC.
	r := e.gc(t, 0, false)
	if r.ChunksDeleted != 2 || e.exists(t, own[1].id) || e.exists(t, own[2].id) || !e.exists(t, own[0].id) {
		t.Fatalf("GC after prune: %v", r)
	}
	// All groups: keep-daily 1 keeps each group's newest.
	all, err := e.adm.Prune(t.Context(), &chunkbridgev1.PruneRequest{KeepDaily: 1, DryRun: true})
	if err != nil || all.Kept != 2 || all.Removed != 0 {
		t.Fatalf("prune of every group: %v, %v", all, err)
	}
	for _, bad := range []*chunkbridgev1.PruneRequest{{KeepLast: -1}, {BackupId: "a", KeepLast: 1}, {Type: "pod", KeepLast: 1}} {
		if _, err := e.adm.Prune(t.Context(), bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Prune(%v) = %v, want InvalidArgument", bad, err)
		}
	}
}

// A snapshot with several files is kept or removed whole: a policy counts
// snapshots, never files, so two files backed up together keep the same
// history.
func TestPruneKeepsSnapshotFilesTogether(t *testing.T) {
	e := newEnv(t, memoryStore(t), admin.Config{})
	root := makeBlobs(3, 3, 512, sha256Alg)
	etc := makeBlobs(4, 3, 512, sha256Alg)
	e.upload(t, root, etc)
	for i, d := range []int{25, 24, 23} {
		e.mustWriteSnapshot(t, "host", "h", day(d), "root.pxar", root[i:i+1])
		e.mustWriteSnapshot(t, "host", "h", day(d), "etc.pxar", etc[i:i+1])
	}
	files := func() map[string][]string {
		resp, err := e.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{Type: "host", BackupId: "h"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for _, s := range resp.Snapshots {
			day := s.Time.AsTime().Format("02")
			for _, f := range s.Files {
				out[day] = append(out[day], f.Name)
			}
		}
		return out
	}
	if got := files(); len(got) != 3 || len(got["23"]) != 2 {
		t.Fatalf("before prune: %v; want 3 snapshots of 2 files", got)
	}
	resp, err := e.adm.Prune(t.Context(), &chunkbridgev1.PruneRequest{KeepLast: 1, Type: "host", BackupId: "h"})
	if err != nil || resp.Kept != 1 || resp.Removed != 2 || resp.Failed != 0 {
		t.Fatalf("prune: %v, %v", resp, err)
	}
	got := files()
	if len(got) != 1 || len(got["25"]) != 2 {
		t.Fatalf("after prune: %v; want the newest snapshot with both its files", got)
	}
	// Both files of each removed snapshot are gone: GC frees their chunks,
	// and keeps both files' chunks of the kept one.
	r := e.gc(t, 0, false)
	if r.ChunksDeleted != 4 || e.exists(t, root[1].id) || e.exists(t, etc[2].id) || !e.exists(t, root[0].id) || !e.exists(t, etc[0].id) {
		t.Fatalf("GC after prune: %d chunks deleted, want the 4 of the removed snapshots' files", r.ChunksDeleted)
	}
}
