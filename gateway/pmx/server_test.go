package pmx_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

type harness struct {
	srv     *pmx.Server
	addr    string
	catalog chunkbridgev1.CatalogServiceClient
}

// transport is a way for the gateway to reach the chunk service.
type transport struct {
	name   string
	chunks func(*servicetest.Services) *chunkclient.Chunks
}

var transports = []transport{
	{"grpc", func(s *servicetest.Services) *chunkclient.Chunks { return chunkclient.NewGRPC(s.Conn) }},
	{"local", func(s *servicetest.Services) *chunkclient.Chunks { return chunkclient.NewLocal(s.Chunks, 0) }},
}

// onBothTransports runs test once with the gateway on gRPC, once on the
// local transport.
func onBothTransports(t *testing.T, test func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { test(t, tr) })
	}
}

// newHarness serves a gateway that reaches the chunk service over gRPC.
func newHarness(t *testing.T, configure ...func(*pmx.Server)) *harness {
	t.Helper()
	return newHarnessOn(t, transports[0], configure...)
}

func newHarnessOn(t *testing.T, tr transport, configure ...func(*pmx.Server)) *harness {
	t.Helper()
	svcs := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
	srv := &pmx.Server{Chunks: tr.chunks(svcs), Catalog: chunkclient.NewCatalogGRPC(svcs.Conn)}
	for _, f := range configure {
		f(srv)
	}
	addr := servicetest.Serve(t, srv)
	return &harness{addr: addr, catalog: svcs.CatalogClient(), srv: srv}
}

type client struct {
	t    *testing.T
	conn net.Conn
	r    *pmxproto.Reader
}

// dial connects and checks the server's Hello comes first.
func (h *harness) dial(t *testing.T) *client {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	cl := &client{t: t, conn: c, r: pmxproto.NewReader(c)}
	if hello, ok := cl.next().(*pmxproto.Hello); !ok || hello.ID != 0 || hello.Version != pmxproto.Version {
		t.Fatalf("first packet is not Hello(0, 1)")
	}
	return cl
}

func (c *client) send(ps ...pmxproto.Packet) {
	c.t.Helper()
	var b []byte
	for _, p := range ps {
		b = p.Encode(b)
	}
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) next() pmxproto.Packet {
	c.t.Helper()
	p, err := c.r.ReadPacket()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return p
}

func (c *client) expectOk(id uint8) {
	c.t.Helper()
	switch p := c.next().(type) {
	case *pmxproto.Ok:
		if p.ID != id {
			c.t.Fatalf("Ok for id %d, want %d", p.ID, id)
		}
	case *pmxproto.Error:
		c.t.Fatalf("Error(%d, %v, %q), want Ok(%d)", p.ID, p.Code, p.Reason, id)
	default:
		c.t.Fatalf("%T, want Ok(%d)", p, id)
	}
}

func (c *client) expectError(id uint8, code pmxproto.ErrorID, says string) {
	c.t.Helper()
	p, ok := c.next().(*pmxproto.Error)
	if !ok || p.ID != id || p.Code != code || !strings.Contains(p.Reason, says) {
		c.t.Fatalf("got %+v, want Error(%d, %v) mentioning %q", p, id, code, says)
	}
}

// expectClosed checks the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	for {
		_, err := c.r.ReadPacket()
		if errors.Is(err, io.EOF) || (err != nil && !pmxproto.IsFatal(err)) {
			return
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.t.Fatal("connection still open")
		}
		if err != nil {
			return
		}
	}
}

func uploadOf(b []byte) (pmxproto.Digest, *pmxproto.UploadChunk) {
	d := pmxproto.Digest(sha256.Sum256(b))
	return d, &pmxproto.UploadChunk{Digest: d, Data: b}
}

func (c *client) upload(id uint8, data []byte) pmxproto.Digest {
	c.t.Helper()
	d, up := uploadOf(data)
	up.ID = id
	c.send(up)
	c.expectOk(id)
	return d
}

func (c *client) create(p *pmxproto.CreateBackup) string {
	c.t.Helper()
	c.send(p)
	switch r := c.next().(type) {
	case *pmxproto.BackupCreated:
		return r.Path
	case *pmxproto.Error:
		c.t.Fatalf("CreateBackup: Error %q", r.Reason)
	}
	c.t.Fatal("CreateBackup: no BackupCreated")
	return ""
}

const ts = 1795600000 // 2026-11-25T...

func TestFixedBackupHashListAndDownload(t *testing.T) {
	onBothTransports(t, testFixedBackupHashListAndDownload)
}

func testFixedBackupHashListAndDownload(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	a, b := bytes.Repeat([]byte("a"), 4096), []byte("tail")
	da, db := c.upload(1, a), c.upload(1, b) // ids are reused
	path := c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupVM, Timestamp: ts, Flags: pmxproto.FlagExcl, ChunkSize: 4096, FileSize: 4096*2 + 4, BackupID: "100", Name: "disk.img"})
	if !strings.HasPrefix(path, "vm/100/") || !strings.HasSuffix(path, "/disk.img.fidx") {
		t.Fatalf("BackupCreated path %q", path)
	}
	c.send(&pmxproto.BackupDataFixed{ID: 2, Entries: []pmxproto.FixedEntry{{Index: 2, Digest: db}}},
		&pmxproto.BackupDataFixed{ID: 2, Entries: []pmxproto.FixedEntry{{Index: 0, Digest: da}, {Index: 1, Digest: da}}},
		&pmxproto.BackupFinished{ID: 2})
	c.expectOk(2)

	c.send(&pmxproto.GetHashList{ID: 3, Name: path})
	var got []pmxproto.Digest
	for {
		part, ok := c.next().(*pmxproto.HashListPart)
		if !ok || part.ID != 3 {
			t.Fatal("want HashListPart(3)")
		}
		if len(part.Digests) == 0 {
			break
		}
		got = append(got, part.Digests...)
	}
	if len(got) != 3 || got[0] != da || got[1] != da || got[2] != db {
		t.Fatalf("hash list = %v", got)
	}

	missing := pmxproto.Digest(sha256.Sum256([]byte("missing")))
	c.send(&pmxproto.DownloadChunks{ID: 4, Digests: []pmxproto.Digest{db, da, missing, da}})
	for i, want := range [][]byte{b, a} {
		ch, ok := c.next().(*pmxproto.Chunk)
		if !ok || ch.ID != 4 || ch.Offset != uint64(i) || !bytes.Equal(ch.Data, want) {
			t.Fatalf("Chunk %d: %+v", i, ch)
		}
	}
	c.expectError(4, pmxproto.ErrorGeneric, "not found")
	// Nothing more for that request: the next reply is for the next request.
	c.upload(5, []byte("after"))
}

func TestDynamicBackupAndBadInput(t *testing.T) { onBothTransports(t, testDynamicBackupAndBadInput) }

func testDynamicBackupAndBadInput(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	x, y := []byte("first chunk"), []byte("second")
	dx, dy := c.upload(1, x), c.upload(1, y)
	_, bad := uploadOf([]byte("data"))
	bad.ID, bad.Data = 6, []byte("other")
	c.send(bad)
	c.expectError(6, pmxproto.ErrorGeneric, "hashes to")
	c.upload(6, []byte("still serving"))

	path := c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, BackupID: "web-01", Name: "root.pxar"})
	c.send(&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: dx}, {Offset: uint64(len(x)), Digest: dy}}}, &pmxproto.BackupFinished{ID: 2})
	c.expectOk(2)

	for _, tc := range []struct {
		name string
		send []pmxproto.Packet
		id   uint8
		says string
	}{
		{"unknown stream", []pmxproto.Packet{&pmxproto.BackupFinished{ID: 9}}, 9, "no open backup file"},
		{"missing hash list", []pmxproto.Packet{&pmxproto.GetHashList{ID: 7, Name: "host/web-01/2000-01-01T00:00:00Z/x.didx"}}, 7, "not found"},
		{"traversal in hash list", []pmxproto.Packet{&pmxproto.GetHashList{ID: 7, Name: "../../etc/x.didx"}}, 7, "backup type"},
	} {
		c.send(tc.send...)
		c.expectError(tc.id, pmxproto.ErrorGeneric, tc.says)
	}

	// EXCL on a snapshot another connection made is refused; on the
	// connection that made it, a second file may join it.
	c2 := h.dial(t)
	c2.send(&pmxproto.CreateBackup{ID: 3, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, BackupID: "web-01", Name: "other"})
	c2.expectError(3, pmxproto.ErrorGeneric, "exists")
	c.create(&pmxproto.CreateBackup{ID: 3, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, BackupID: "web-01", Name: "other"})
	c.send(&pmxproto.BackupDataDynamic{ID: 3, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: dy}}}, &pmxproto.BackupFinished{ID: 3})
	c.expectOk(3)

	// Refused entries are Errors on the stream id, then Finish fails.
	other := uint64(ts + 60)
	c.create(&pmxproto.CreateBackup{ID: 4, BackupType: pmxproto.BackupHost, Timestamp: other, Flags: pmxproto.FlagDynamicChunks, BackupID: "web-01", Name: "gap"})
	c.send(&pmxproto.BackupDataDynamic{ID: 4, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: dx}, {Offset: 1, Digest: dy}}}, &pmxproto.BackupFinished{ID: 4})
	c.expectError(4, pmxproto.ErrorGeneric, "not contiguous")
	c.expectError(4, pmxproto.ErrorGeneric, "refused")
	c.create(&pmxproto.CreateBackup{ID: 4, BackupType: pmxproto.BackupVM, Timestamp: other, ChunkSize: 11, FileSize: 22, BackupID: "5", Name: "img"})
	c.send(&pmxproto.BackupDataFixed{ID: 4, Entries: []pmxproto.FixedEntry{{Index: 5, Digest: dx}}}, &pmxproto.BackupFinished{ID: 4})
	c.expectError(4, pmxproto.ErrorGeneric, "out of range")
	c.expectError(4, pmxproto.ErrorGeneric, "refused")
	c.create(&pmxproto.CreateBackup{ID: 4, BackupType: pmxproto.BackupVM, Timestamp: other + 1, ChunkSize: 11, FileSize: 22, BackupID: "5", Name: "img"})
	c.send(&pmxproto.BackupDataFixed{ID: 4, Entries: []pmxproto.FixedEntry{{Index: 0, Digest: dx}}}, &pmxproto.BackupFinished{ID: 4})
	c.expectError(4, pmxproto.ErrorGeneric, "1 of 2 slots")
	c.create(&pmxproto.CreateBackup{ID: 4, BackupType: pmxproto.BackupVM, Timestamp: other + 2, ChunkSize: 11, FileSize: 11, BackupID: "5", Name: "img"})
	c.send(&pmxproto.BackupDataFixed{ID: 4, Entries: []pmxproto.FixedEntry{{Index: 0, Digest: pmxproto.Digest(sha256.Sum256([]byte("never uploaded")))}}}, &pmxproto.BackupFinished{ID: 4})
	c.expectError(4, pmxproto.ErrorGeneric, "not stored")
	c.expectError(4, pmxproto.ErrorGeneric, "refused")

	// Bad bodies: answered, connection kept. A backup id like ../x is
	// refused by the codec as a body error.
	raw := (&pmxproto.CreateBackup{ID: 8, BackupType: pmxproto.BackupVM, Timestamp: ts, ChunkSize: 1, FileSize: 1, BackupID: "ab", Name: "n"}).Encode(nil)
	copy(raw[6+24:], "..") // the id becomes ".."
	c.conn.Write(raw)
	c.expectError(8, pmxproto.ErrorGeneric, "")
	c.upload(1, []byte("still serving after bad bodies"))

	snaps, err := h.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{})
	if err != nil || len(snaps.Snapshots) != 1 || len(snaps.Snapshots[0].Files) != 2 || snaps.Snapshots[0].Files[1].Path != path {
		t.Fatalf("snapshots after refusals: %v %v; want only %s", snaps, err, path)
	}
}

func TestFramingErrorsCloseTheConnection(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"length below 6", []byte{1, 7, 5, 0, 0, 0}},
		{"length above 16 MiB", binary.LittleEndian.AppendUint32([]byte{1, 7}, 16<<20+1)},
		{"unknown type", []byte{1, 99, 6, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := h.dial(t)
			c.conn.Write(tc.raw)
			c.expectClosed()
		})
	}
	// Others are still served.
	h.dial(t).upload(1, []byte("ok"))
}

func TestHashListBusy(t *testing.T) {
	h := newHarness(t)
	c := h.dial(t)
	d := c.upload(1, []byte("x"))
	const slots = 200_000
	path := c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupCT, Timestamp: ts, ChunkSize: 1, FileSize: slots, BackupID: "big", Name: "img"})
	entries := make([]pmxproto.FixedEntry, 0, 50_000)
	for i := range slots {
		entries = append(entries, pmxproto.FixedEntry{Index: uint64(i), Digest: d})
		if len(entries) == cap(entries) {
			c.send(&pmxproto.BackupDataFixed{ID: 2, Entries: entries})
			entries = entries[:0]
		}
	}
	c.send(&pmxproto.BackupFinished{ID: 2})
	c.expectOk(2)
	c.send(&pmxproto.GetHashList{ID: 3, Name: path}, &pmxproto.GetHashList{ID: 4, Name: path})
	busy, n := false, 0
	for done := false; !done; {
		switch p := c.next().(type) {
		case *pmxproto.Error:
			if p.ID != 4 || p.Code != pmxproto.ErrorBusy {
				t.Fatalf("Error %+v", p)
			}
			busy = true
		case *pmxproto.HashListPart:
			n += len(p.Digests)
			done = len(p.Digests) == 0
		}
	}
	if !busy || n != slots {
		t.Fatalf("busy=%v, %d digests; want Busy for the second list and %d digests", busy, n, slots)
	}
}

// A connection dropped in the middle of a backup leaves no snapshot file.
func TestDroppedConnectionLeavesNothing(t *testing.T) {
	onBothTransports(t, testDroppedConnectionLeavesNothing)
}

func testDroppedConnectionLeavesNothing(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	d := c.upload(1, []byte("chunk"))
	c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "h", Name: "s"})
	c.send(&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}})
	c.conn.Close()
	// A second client completes its own backup; the first left nothing.
	c2 := h.dial(t)
	c2.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts + 1, Flags: pmxproto.FlagDynamicChunks, BackupID: "h", Name: "s"})
	c2.send(&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}}, &pmxproto.BackupFinished{ID: 2})
	c2.expectOk(2)
	snaps, err := h.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{})
	if err != nil || len(snaps.Snapshots) != 1 {
		t.Fatalf("snapshots = %v, %v; want only the completed one", snaps, err)
	}
}

// Uploads pipelined with the entries that reference them, on many ids, are
// stored before the entries reach the catalog (the upload barrier), and
// each id's replies come in order.
func TestUploadBarrierPipelined(t *testing.T) { onBothTransports(t, testUploadBarrierPipelined) }

func testUploadBarrierPipelined(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	c.create(&pmxproto.CreateBackup{ID: 200, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "b", Name: "s"})
	const n = 300
	var ps []pmxproto.Packet
	var entries []pmxproto.DynamicEntry
	off := uint64(0)
	for i := range n {
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 1000+i)
		d, up := uploadOf(data)
		up.ID = uint8(i % 7)
		ps = append(ps, up)
		entries = append(entries, pmxproto.DynamicEntry{Offset: off, Digest: d})
		off += uint64(len(data))
		if i%50 == 49 {
			ps = append(ps, &pmxproto.BackupDataDynamic{ID: 200, Entries: entries})
			entries = nil
		}
	}
	ps = append(ps, &pmxproto.BackupFinished{ID: 200})
	c.send(ps...)
	oks := map[uint8]int{}
	for done := false; !done; {
		switch p := c.next().(type) {
		case *pmxproto.Ok:
			if p.ID == 200 {
				done = true
			} else {
				oks[p.ID]++
			}
		case *pmxproto.Error:
			t.Fatalf("Error(%d, %q)", p.ID, p.Reason)
		default:
			t.Fatalf("%T", p)
		}
	}
	total := 0
	for _, k := range oks {
		total += k
	}
	if total != n {
		t.Fatalf("%d uploads answered before the file's Ok, want %d", total, n)
	}
}

// A client that sends its last packets and half-closes still gets every
// answer: requests read before the end of input are served, and a
// BackupFinished among them publishes its file.
func TestHalfCloseAfterBackupFinished(t *testing.T) {
	h := newHarness(t)
	c := h.dial(t)
	data := bytes.Repeat([]byte("h"), 4096)
	d, up := uploadOf(data)
	up.ID = 1
	c.send(up,
		&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagExcl, ChunkSize: 4096, FileSize: 4096, BackupID: "half", Name: "x.img"},
		&pmxproto.BackupDataFixed{ID: 2, Entries: []pmxproto.FixedEntry{{Index: 0, Digest: d}}},
		&pmxproto.BackupFinished{ID: 2})
	if err := c.conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// Replies of different ids may come in any order; those of id 2 in
	// order: BackupCreated, then Ok once the file is published.
	var got []string
	for range 3 {
		switch p := c.next().(type) {
		case *pmxproto.Ok:
			got = append(got, fmt.Sprintf("Ok(%d)", p.ID))
		case *pmxproto.BackupCreated:
			got = append(got, fmt.Sprintf("BackupCreated(%d)", p.ID))
		default:
			t.Fatalf("after %v: unexpected %+v", got, p)
		}
	}
	got = slices.DeleteFunc(got, func(s string) bool { return s == "Ok(1)" })
	if !slices.Equal(got, []string{"BackupCreated(2)", "Ok(2)"}) {
		t.Fatalf("replies to id 2 after the half-close: %v, want BackupCreated then Ok", got)
	}
	c.expectClosed()
}

// A snapshot holds several files: CreateBackup without EXCL adds one to a
// snapshot, new or made by another connection, and refuses only a file of
// the same name; with EXCL it refuses a snapshot that has a file, unless
// this connection made it (the original server's rule).
func TestSnapshotWithSeveralFiles(t *testing.T) { onBothTransports(t, testSnapshotWithSeveralFiles) }

func testSnapshotWithSeveralFiles(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	d := c.upload(1, []byte("shared chunk"))
	file := func(c *client, id uint8, flags pmxproto.Flags, name string) string {
		t.Helper()
		path := c.create(&pmxproto.CreateBackup{ID: id, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: flags | pmxproto.FlagDynamicChunks, BackupID: "multi", Name: name})
		c.send(&pmxproto.BackupDataDynamic{ID: id, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}}, &pmxproto.BackupFinished{ID: id})
		c.expectOk(id)
		return path
	}
	first := file(c, 2, pmxproto.FlagExcl, "root.pxar")
	file(c, 3, pmxproto.FlagExcl, "etc.pxar") // this connection made the snapshot

	// Another connection: EXCL is refused, a new file without it joins.
	c2 := h.dial(t)
	c2.send(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, BackupID: "multi", Name: "home.pxar"})
	c2.expectError(2, pmxproto.ErrorGeneric, "exists")
	third := file(c2, 2, 0, "home.pxar")
	if dir := first[:strings.LastIndex(first, "/")]; !strings.HasPrefix(third, dir+"/") {
		t.Fatalf("second connection's file %s is not in the first one's snapshot %s", third, dir)
	}
	// A file the snapshot has is refused, with or without EXCL, on any
	// connection; the connection stays usable.
	for _, cl := range []*client{c, c2} {
		cl.send(&pmxproto.CreateBackup{ID: 4, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "multi", Name: "root.pxar"})
		cl.expectError(4, pmxproto.ErrorGeneric, "exists")
	}
	// Without EXCL a new snapshot is made as well.
	c2.create(&pmxproto.CreateBackup{ID: 5, BackupType: pmxproto.BackupHost, Timestamp: ts + 60, Flags: pmxproto.FlagDynamicChunks, BackupID: "multi", Name: "root.pxar"})
	c2.send(&pmxproto.BackupDataDynamic{ID: 5, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}}, &pmxproto.BackupFinished{ID: 5})
	c2.expectOk(5)

	snaps, err := h.catalog.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{Type: "host", BackupId: "multi"})
	if err != nil || len(snaps.Snapshots) != 2 || len(snaps.Snapshots[0].Files) != 1 {
		t.Fatalf("snapshots = %v, %v; want the new one of one file, then the one of three", snaps, err)
	}
	var names []string
	for _, f := range snaps.Snapshots[1].Files {
		names = append(names, f.Name)
	}
	slices.Sort(names)
	if want := []string{"etc.pxar.didx", "home.pxar.didx", "root.pxar.didx"}; !slices.Equal(names, want) {
		t.Fatalf("snapshot files %v, want %v", names, want)
	}
}
