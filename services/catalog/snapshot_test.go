package catalog_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

type Create = chunkbridgev1.WriteSnapshotFileRequest_Create
type Entry = chunkbridgev1.WriteSnapshotFileRequest_Entry

// storeChunk uploads data and returns its hex SHA-256.
func (f *fixture) storeChunk(t *testing.T, data []byte) string {
	t.Helper()
	id := sha256.Sum256(data)
	if _, err := f.chunks.Put(t.Context(), chunk.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(id[:])
}

type writeResult struct {
	path    string
	refused []*chunkbridgev1.WriteSnapshotFileResponse_EntryRefused
	file    *chunkbridgev1.SnapshotFileInfo
	err     error
}

// write runs a WriteSnapshotFile conversation; commit=false ends the stream
// without Commit.
func (f *fixture) write(t *testing.T, c *Create, entries []*Entry, commit bool) writeResult {
	t.Helper()
	stream, err := f.catalog.WriteSnapshotFile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{Create: c}})
	var res writeResult
	first, err := stream.Recv()
	if err != nil {
		res.err = err
		return res
	}
	res.path = first.GetCreated().GetPath()
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Entries_{Entries: &chunkbridgev1.WriteSnapshotFileRequest_Entries{Entries: entries}}})
	if commit {
		stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Commit_{Commit: &chunkbridgev1.WriteSnapshotFileRequest_Commit{}}})
	}
	stream.CloseSend()
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return res
		}
		if err != nil {
			res.err = err
			return res
		}
		if r := resp.GetRefused(); r != nil {
			res.refused = append(res.refused, r)
		}
		if c := resp.GetCommitted(); c != nil {
			res.file = c.GetFile()
		}
	}
}

func at(s string) *timestamppb.Timestamp {
	t, _ := time.Parse(time.RFC3339, s)
	return timestamppb.New(t)
}

func (f *fixture) digests(t *testing.T, path string) ([]string, error) {
	stream, err := f.catalog.ReadSnapshotDigests(t.Context(), &chunkbridgev1.ReadSnapshotDigestsRequest{Path: path})
	if err != nil {
		return nil, err
	}
	var out []string
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r.Digests...)
	}
}

func TestFixedSnapshot(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	a, b, c := bytes.Repeat([]byte("a"), 4096), bytes.Repeat([]byte("b"), 4096), bytes.Repeat([]byte("c"), 1808)
	da, db, dc := f.storeChunk(t, a), f.storeChunk(t, b), f.storeChunk(t, c)
	create := &Create{Type: "vm", BackupId: "100", Time: at("2026-11-25T10:00:00Z"), Name: "disk.img", Fixed: true, ChunkSize: 4096, FileSize: 10_000, Exclusive: true}
	res := f.write(t, create, []*Entry{{Slot: 2, Digest: dc}, {Slot: 0, Digest: da}, {Slot: 1, Digest: db}}, true)
	if res.err != nil || res.file == nil || len(res.refused) > 0 {
		t.Fatalf("write = %+v", res)
	}
	if res.path != "vm/100/2026-11-25T10:00:00Z/disk.img.fidx" || res.file.ContentSize != 10_000 || res.file.ChunkCount != 3 || !res.file.Fixed {
		t.Fatalf("committed %+v at %s", res.file, res.path)
	}
	got, err := f.digests(t, res.path)
	if err != nil || strings.Join(got, ",") != strings.Join([]string{da, db, dc}, ",") {
		t.Fatalf("digests = %v, %v", got, err)
	}
	// The same file seen as a casync blob index.
	idx, err := f.get(t, "snapshots/vm/100/2026-11-25T10:00:00Z/disk.img.caibx")
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := caindex.Parse(bytes.NewReader(idx), 0)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Digest() != caindex.SHA256 || len(parsed.Chunks) != 3 || parsed.Size() != 10_000 || parsed.Chunks[2].Size() != 1808 || hex.EncodeToString(parsed.Chunks[1].ID[:]) != db {
		t.Fatalf("blob index: %d chunks, %d bytes", len(parsed.Chunks), parsed.Size())
	}
	// "latest" names the newest snapshot there too, as in pmx restore.
	if latest, err := f.get(t, "snapshots/vm/100/latest/disk.img.caibx"); err != nil || !bytes.Equal(latest, idx) {
		t.Fatalf("the latest snapshot as an index: %v", err)
	}
	if _, err := f.get(t, "snapshots/vm/100/latest/nope.caibx"); status.Code(err) != codes.NotFound {
		t.Fatalf("latest of a file no snapshot has: %v", err)
	}
	// EXCL on an existing snapshot is refused; a second file without EXCL
	// joins it.
	if res := f.write(t, create, nil, true); status.Code(res.err) != codes.AlreadyExists {
		t.Fatalf("exclusive create of an existing snapshot = %v", res.err)
	}
	second := &Create{Type: "vm", BackupId: "100", Time: at("2026-11-25T10:00:00Z"), Name: "disk2.img", Fixed: true, ChunkSize: 4096, FileSize: 4096}
	if res := f.write(t, second, []*Entry{{Slot: 0, Digest: da}}, true); res.err != nil {
		t.Fatal(res.err)
	}
	snap, err := f.catalog.GetSnapshot(t.Context(), &chunkbridgev1.GetSnapshotRequest{Type: "vm", BackupId: "100", Time: "2026-11-25T10:00:00Z"})
	if err != nil || len(snap.Snapshot.Files) != 2 {
		t.Fatalf("GetSnapshot = %v, %v", snap, err)
	}
}

func TestDynamicSnapshotAndLatest(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	var entries []*Entry
	var offset int64
	for i := range 5 {
		data := bytes.Repeat([]byte{byte(i)}, 1000+i)
		entries = append(entries, &Entry{Offset: offset, Digest: f.storeChunk(t, data)})
		offset += int64(len(data))
	}
	for i, ts := range []string{"2026-11-24T10:00:00Z", "2026-11-25T10:00:00Z"} {
		res := f.write(t, &Create{Type: "host", BackupId: "web-01", Time: at(ts), Name: "root.pxar"}, entries[:3+i], true)
		if res.err != nil || res.file.ContentSize != entries[3+i-1].Offset+int64(1000+2+i) {
			t.Fatalf("write %s = %+v", ts, res)
		}
	}
	got, err := f.digests(t, "host/web-01/latest/root.pxar.didx")
	if err != nil || len(got) != 4 {
		t.Fatalf("latest digests = %d, %v; want the newer snapshot's 4", len(got), err)
	}
	if _, err := f.digests(t, "host/web-01/latest/other.didx"); status.Code(err) != codes.NotFound {
		t.Fatalf("latest of a file no snapshot has = %v", err)
	}
	list, err := f.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{Type: "host"})
	if err != nil || len(list.Snapshots) != 2 || list.Snapshots[0].Time.AsTime().Format(time.RFC3339) != "2026-11-25T10:00:00Z" {
		t.Fatalf("ListSnapshots = %v, %v (want newest first)", list, err)
	}
	if _, err := f.catalog.DeleteSnapshot(t.Context(), &chunkbridgev1.DeleteSnapshotRequest{Type: "host", BackupId: "web-01", Time: "2026-11-25T10:00:00Z"}); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.digests(t, "host/web-01/latest/root.pxar.didx"); len(got) != 3 {
		t.Fatalf("after deleting the newest, latest has %d digests, want 3", len(got))
	}
}

func TestSnapshotRefusals(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	chunk4k := f.storeChunk(t, bytes.Repeat([]byte("x"), 4096))
	small := f.storeChunk(t, []byte("small"))
	absent := strings.Repeat("ab", 32)
	fixed := func(name string) *Create {
		return &Create{Type: "ct", BackupId: "7", Time: at("2026-01-01T00:00:00Z"), Name: name, Fixed: true, ChunkSize: 4096, FileSize: 8192}
	}
	dyn := func(name string) *Create {
		return &Create{Type: "ct", BackupId: "7", Time: at("2026-01-01T00:00:00Z"), Name: name}
	}
	for _, tc := range []struct {
		name     string
		create   *Create
		entries  []*Entry
		atCreate codes.Code // refused at Create
		entry    codes.Code // refused entry
		says     string
	}{
		{name: "id with ..", create: &Create{Type: "vm", BackupId: "../x", Name: "a", Fixed: true, ChunkSize: 1}, atCreate: codes.InvalidArgument, says: "backup id"},
		{name: "name with /", create: &Create{Type: "vm", BackupId: "1", Name: "a/b", Fixed: true, ChunkSize: 1}, atCreate: codes.InvalidArgument, says: "file name"},
		{name: "bad type", create: &Create{Type: "pod", BackupId: "1", Name: "a"}, atCreate: codes.InvalidArgument, says: "backup type"},
		{name: "chunk size 0", create: &Create{Type: "vm", BackupId: "1", Name: "a", Fixed: true}, atCreate: codes.InvalidArgument, says: "chunk size"},
		{name: "dynamic with a size", create: &Create{Type: "vm", BackupId: "1", Name: "a", FileSize: 5}, atCreate: codes.InvalidArgument, says: "file size"},
		{name: "slot out of range", create: fixed("f1"), entries: []*Entry{{Slot: 0, Digest: chunk4k}, {Slot: 1, Digest: chunk4k}, {Slot: 2, Digest: chunk4k}}, entry: codes.InvalidArgument, says: "out of range"},
		{name: "chunk not stored", create: fixed("f2"), entries: []*Entry{{Slot: 0, Digest: chunk4k}, {Slot: 1, Digest: absent}}, entry: codes.FailedPrecondition, says: "not stored"},
		{name: "wrong chunk size for a slot", create: fixed("f3"), entries: []*Entry{{Slot: 0, Digest: chunk4k}, {Slot: 1, Digest: small}}, entry: codes.InvalidArgument, says: "needs a chunk of 4096"},
		{name: "unfilled slots", create: fixed("f4"), entries: []*Entry{{Slot: 0, Digest: chunk4k}}, says: "1 of 2 slots"},
		{name: "offset not contiguous", create: dyn("d1"), entries: []*Entry{{Offset: 0, Digest: small}, {Offset: 6, Digest: small}}, entry: codes.InvalidArgument, says: "not contiguous"},
		{name: "bad digest", create: dyn("d2"), entries: []*Entry{{Offset: 0, Digest: "xyz"}}, entry: codes.InvalidArgument, says: "hex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := f.write(t, tc.create, tc.entries, true)
			if tc.atCreate != codes.OK {
				if status.Code(res.err) != tc.atCreate || !strings.Contains(res.err.Error(), tc.says) {
					t.Fatalf("Create = %v, want %v mentioning %q", res.err, tc.atCreate, tc.says)
				}
				return
			}
			if tc.entry != codes.OK && (len(res.refused) == 0 || codes.Code(res.refused[0].Code) != tc.entry || !strings.Contains(res.refused[0].Message, tc.says)) {
				t.Fatalf("refused = %v, want %v mentioning %q", res.refused, tc.entry, tc.says)
			}
			if res.err == nil || res.file != nil {
				t.Fatalf("commit after a refusal succeeded: %+v", res)
			}
			if tc.entry == codes.OK && !strings.Contains(res.err.Error(), tc.says) {
				t.Fatalf("commit error %v does not say %q", res.err, tc.says)
			}
			if _, err := f.digests(t, res.path); status.Code(err) != codes.NotFound {
				t.Fatalf("a refused snapshot file is visible: %v", err)
			}
		})
	}
	// A stream that ends without Commit leaves nothing.
	res := f.write(t, fixed("nocommit"), []*Entry{{Slot: 0, Digest: chunk4k}, {Slot: 1, Digest: chunk4k}}, false)
	if res.file != nil {
		t.Fatal("committed without Commit")
	}
	if _, err := f.digests(t, res.path); status.Code(err) != codes.NotFound {
		t.Fatalf("an uncommitted file is visible: %v", err)
	}
}

// A snapshot holds several files: without exclusive a file joins it, and
// only a name it has is refused, of either kind (casync reads foo.fidx and
// foo.didx both as foo.caibx); exclusive refuses the snapshot.
func TestSnapshotOfSeveralFiles(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	small := f.storeChunk(t, []byte("small"))
	create := func(name string, fixed, exclusive bool) *Create {
		c := &Create{Type: "host", BackupId: "h", Time: at("2026-01-01T00:00:00Z"), Name: name, Exclusive: exclusive}
		if fixed {
			c.Fixed, c.ChunkSize, c.FileSize = true, 5, 5
		}
		return c
	}
	entry := []*Entry{{Offset: 0, Slot: 0, Digest: small}}
	for _, c := range []*Create{create("root.pxar", false, true), create("etc.pxar", false, false), create("disk.img", true, false)} {
		if res := f.write(t, c, entry, true); res.err != nil || res.file == nil {
			t.Fatalf("%s: %+v", c.Name, res)
		}
	}
	for _, tc := range []struct {
		create *Create
		says   string
	}{
		{create("new.pxar", false, true), "exclusive"},
		{create("etc.pxar", false, false), "etc.pxar.didx"},
		{create("etc.pxar", true, false), "etc.pxar.didx"},
		{create("disk.img", false, false), "disk.img.fidx"},
	} {
		if res := f.write(t, tc.create, entry, true); status.Code(res.err) != codes.AlreadyExists || !strings.Contains(res.err.Error(), tc.says) {
			t.Fatalf("Create %s (fixed %v, exclusive %v) = %v, want AlreadyExists naming %s", tc.create.Name, tc.create.Fixed, tc.create.Exclusive, res.err, tc.says)
		}
	}
	snap, err := f.catalog.GetSnapshot(t.Context(), &chunkbridgev1.GetSnapshotRequest{Type: "host", BackupId: "h", Time: "2026-01-01T00:00:00Z"})
	if err != nil || len(snap.Snapshot.Files) != 3 {
		t.Fatalf("GetSnapshot = %v, %v; want 3 files", snap, err)
	}
}

// A Create announcing the most slots allowed allocates nothing for them:
// memory follows the entries sent, so an open file, or one entry at its
// last slot, costs bytes, not the 528 MiB the size field claims.
func TestFixedSlotsGrowWithEntries(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	one := f.storeChunk(t, []byte{1})
	const slots = pbsindex.DefaultMaxEntries
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	const files = 4
	for i := range files {
		create := &Create{Type: "vm", BackupId: "big", Time: at("2026-11-25T10:00:00Z"), Name: fmt.Sprintf("disk%d.img", i), Fixed: true, ChunkSize: 1, FileSize: slots}
		res := f.write(t, create, []*Entry{{Slot: slots - 1, Digest: one}}, true)
		if res.err == nil || !strings.Contains(res.err.Error(), fmt.Sprintf("1 of %d slots", slots)) {
			t.Fatalf("commit with one of %d slots = %v", slots, res.err)
		}
	}
	runtime.ReadMemStats(&after)
	// Before slots grew with entries, each Create allocated 33 B a slot.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Fatalf("%d files announcing %d slots allocated %d MiB", files, slots, alloc>>20)
	}
}

// A snapshot dated in the future is refused: it would be "latest" for good
// and outrank real backups in every retention rule.
func TestFutureSnapshotRefused(t *testing.T) {
	f := newFixture(t, catalog.Config{})
	d := f.storeChunk(t, []byte("future"))
	future := timestamppb.New(time.Now().Add(time.Hour))
	res := f.write(t, &Create{Type: "vm", BackupId: "100", Time: future, Name: "disk"}, []*Entry{{Offset: 0, Digest: d}}, true)
	if status.Code(res.err) != codes.InvalidArgument || !strings.Contains(res.err.Error(), "in the future") {
		t.Fatalf("a snapshot an hour ahead = %v, want InvalidArgument", res.err)
	}
	soon := timestamppb.New(time.Now().Add(time.Minute)) // clocks a little apart
	if res := f.write(t, &Create{Type: "vm", BackupId: "100", Time: soon, Name: "disk"}, []*Entry{{Offset: 0, Digest: d}}, true); res.err != nil {
		t.Fatalf("a snapshot a minute ahead = %v", res.err)
	}
}
