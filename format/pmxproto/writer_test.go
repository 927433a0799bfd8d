package pmxproto_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

func randomDigest(r *rand.Rand) (d pmxproto.Digest) {
	for i := range d {
		d[i] = byte(r.Uint32())
	}
	return d
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randomPackets returns n valid packets of every type, sizes varied.
func randomPackets(r *rand.Rand, n int) []pmxproto.Packet {
	var ps []pmxproto.Packet
	id := func() uint8 { return uint8(r.Uint32()) }
	digests := func(min int) []pmxproto.Digest {
		ds := make([]pmxproto.Digest, min+r.IntN(50))
		for i := range ds {
			ds[i] = randomDigest(r)
		}
		return ds
	}
	for range n {
		fixed := make([]pmxproto.FixedEntry, 1+r.IntN(5))
		for i := range fixed {
			fixed[i] = pmxproto.FixedEntry{Index: r.Uint64(), Digest: randomDigest(r)}
		}
		dyn := make([]pmxproto.DynamicEntry, 1+r.IntN(5))
		for i := range dyn {
			dyn[i] = pmxproto.DynamicEntry{Offset: r.Uint64(), Digest: randomDigest(r)}
		}
		cb := &pmxproto.CreateBackup{ID: id(), BackupType: pmxproto.BackupType(r.IntN(3)), Timestamp: r.Uint64N(253402300800),
			Flags: pmxproto.Flags(r.IntN(8)), BackupID: "vm-" + strings.Repeat("x", r.IntN(200)), Name: "disk ü " + strings.Repeat("y", r.IntN(240))}
		if cb.Dynamic() {
			cb.ChunkSize = r.Uint32()
		} else {
			cb.ChunkSize, cb.FileSize = 1+r.Uint32N(pmxproto.MaxUploadData), r.Uint64()
		}
		ps = append(ps,
			&pmxproto.Hello{ID: id(), Version: r.Uint32()},
			&pmxproto.Ok{ID: id()},
			&pmxproto.Error{ID: id(), Code: pmxproto.ErrorID(r.Uint32()), Reason: strings.Repeat("é", r.IntN(100))},
			&pmxproto.GetHashList{ID: id(), Name: "host/a/" + strings.Repeat("z", r.IntN(1000)) + ".fidx"},
			&pmxproto.HashListPart{ID: id(), Digests: digests(0)},
			&pmxproto.DownloadChunks{ID: id(), Digests: digests(1)},
			&pmxproto.Chunk{ID: id(), Offset: r.Uint64(), Digest: randomDigest(r), Data: randomBytes(r, 1+r.IntN(100<<10))},
			&pmxproto.UploadChunk{ID: id(), Digest: randomDigest(r), Data: randomBytes(r, 1+r.IntN(100<<10))},
			cb,
			&pmxproto.BackupCreated{ID: id(), Path: cb.Path()},
			&pmxproto.BackupDataFixed{ID: id(), Entries: fixed},
			&pmxproto.BackupDataDynamic{ID: id(), Entries: dyn},
			&pmxproto.BackupFinished{ID: id()},
		)
	}
	return ps
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ps := randomPackets(r, 40)
	var buf bytes.Buffer
	w := pmxproto.NewWriter(&buf)
	var want []byte
	for _, p := range ps {
		if err := w.WritePacket(p); err != nil {
			t.Fatalf("WritePacket(%T): %v", p, err)
		}
		want = p.Encode(want)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatal("Writer output differs from concatenated Encode output")
	}
	rd := pmxproto.NewReader(&buf)
	for i, p := range ps {
		got, err := rd.ReadPacket()
		if err != nil {
			t.Fatalf("packet %d (%T): %v", i, p, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Fatalf("packet %d: got %#v, want %#v", i, got, p)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	long := strings.Repeat("a", 256)
	okCB := func() *pmxproto.CreateBackup {
		return &pmxproto.CreateBackup{ID: 1, BackupType: pmxproto.BackupVM, Timestamp: 1, ChunkSize: 4096, BackupID: "100", Name: "drive-scsi0.img"}
	}
	with := func(f func(*pmxproto.CreateBackup)) *pmxproto.CreateBackup { c := okCB(); f(c); return c }
	cases := []struct {
		p     pmxproto.Packet
		field string
	}{
		{&pmxproto.Error{ID: 1, Reason: "\xff"}, "reason"},
		{&pmxproto.Error{ID: 1, Reason: strings.Repeat("x", pmxproto.MaxBodySize)}, "body"},
		{&pmxproto.GetHashList{ID: 1}, "name_length"},
		{&pmxproto.GetHashList{ID: 1, Name: strings.Repeat("x", 65536)}, "name_length"},
		{&pmxproto.HashListPart{ID: 1, Digests: make([]pmxproto.Digest, pmxproto.MaxDigestsPerPacket+1)}, "body"},
		{&pmxproto.DownloadChunks{ID: 1}, "body"},
		{&pmxproto.Chunk{ID: 1}, "data"},
		{&pmxproto.Chunk{ID: 1, Data: make([]byte, pmxproto.MaxChunkData+1)}, "data"},
		{&pmxproto.UploadChunk{ID: 1}, "data"},
		{with(func(c *pmxproto.CreateBackup) { c.BackupID = long }), "id_length"},
		{with(func(c *pmxproto.CreateBackup) { c.BackupID = "-x" }), "id"},
		{with(func(c *pmxproto.CreateBackup) { c.Name = long }), "name_length"},
		{with(func(c *pmxproto.CreateBackup) { c.Name = "a/b" }), "name"},
		{with(func(c *pmxproto.CreateBackup) { c.BackupType = 3 }), "backup_type"},
		{with(func(c *pmxproto.CreateBackup) { c.Flags = 0x10 }), "flags"},
		{with(func(c *pmxproto.CreateBackup) { c.ChunkSize = 0 }), "chunk_size"},
		{with(func(c *pmxproto.CreateBackup) { c.Flags = pmxproto.FlagDynamicChunks; c.FileSize = 5 }), "file_size"},
		{with(func(c *pmxproto.CreateBackup) { c.Timestamp = 253402300800 }), "timestamp"},
		{&pmxproto.BackupCreated{ID: 1, Path: "a\x00b"}, "path"},
		{&pmxproto.BackupDataFixed{ID: 1}, "body"},
		{&pmxproto.BackupDataDynamic{ID: 1, Entries: make([]pmxproto.DynamicEntry, pmxproto.MaxEntriesPerPacket+1)}, "body"},
	}
	for _, c := range cases {
		var buf bytes.Buffer
		w := pmxproto.NewWriter(&buf)
		err := w.WritePacket(c.p)
		var be *pmxproto.BodyError
		if !errors.As(err, &be) || be.Field != c.field {
			t.Errorf("%T: WritePacket = %v, want a *BodyError on %q", c.p, err, c.field)
			continue
		}
		if w.Buffered() != 0 {
			t.Errorf("%T: refused packet left %d bytes buffered", c.p, w.Buffered())
		}
		// The writer stays usable.
		if err := w.WritePacket(&pmxproto.Ok{ID: 1}); err != nil || w.Flush() != nil || buf.Len() != 6 {
			t.Errorf("%T: writer unusable after a refused packet: %v", c.p, err)
		}
	}
	if err := okCB().Validate(); err != nil {
		t.Fatalf("valid CreateBackup refused: %v", err)
	}
}

// recorder keeps the size of every Write.
type recorder struct {
	bytes.Buffer
	writes []int
}

func (r *recorder) Write(b []byte) (int, error) {
	r.writes = append(r.writes, len(b))
	return r.Buffer.Write(b)
}

func TestWriterBuffering(t *testing.T) {
	var rec recorder
	w := pmxproto.NewWriter(&rec)
	for i := range 100 {
		if err := w.WritePacket(&pmxproto.Ok{ID: uint8(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.writes) != 0 || w.Buffered() != 600 {
		t.Fatalf("small packets written early: %v, %d buffered", rec.writes, w.Buffered())
	}
	if err := w.Flush(); err != nil || len(rec.writes) != 1 || w.Buffered() != 0 {
		t.Fatalf("Flush: %v, writes %v", err, rec.writes)
	}
	// A large chunk goes out as its head (with what was buffered) and
	// then the data itself, uncopied.
	w.WritePacket(&pmxproto.Ok{ID: 1})
	up := &pmxproto.UploadChunk{ID: 2, Digest: digestOf("x"), Data: make([]byte, 1<<20)}
	if err := w.WritePacket(up); err != nil {
		t.Fatal(err)
	}
	if got := rec.writes[1:]; !reflect.DeepEqual(got, []int{6 + 38, 1 << 20}) {
		t.Fatalf("writes for a large chunk: %v", got)
	}
	want := up.Encode((&pmxproto.Ok{ID: 1}).Encode(nil))
	if !bytes.Equal(rec.Bytes()[600:], want) {
		t.Fatal("bytes differ from Encode")
	}
	// Enough small packets flush on their own.
	rec.writes = nil
	for range 2000 {
		w.WritePacket(&pmxproto.DownloadChunks{ID: 3, Digests: []pmxproto.Digest{{}}})
	}
	if len(rec.writes) == 0 {
		t.Fatal("no automatic flush after 76 KB of packets")
	}
}

type failWriter struct {
	n   int // bytes accepted before failing
	err error
}

func (f *failWriter) Write(b []byte) (int, error) {
	if len(b) <= f.n {
		f.n -= len(b)
		return len(b), nil
	}
	n := f.n
	f.n = 0
	return n, f.err
}

func TestWriterErrorsSticky(t *testing.T) {
	boom := errors.New("broken pipe")
	w := pmxproto.NewWriter(&failWriter{n: 3, err: boom})
	w.WritePacket(&pmxproto.Ok{ID: 1})
	err := w.Flush()
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "writing 6 bytes (wrote 3)") {
		t.Fatalf("Flush: %v", err)
	}
	if err2 := w.WritePacket(&pmxproto.Ok{ID: 2}); err2 != err {
		t.Fatalf("WritePacket after failure: %v", err2)
	}
	if err2 := w.Flush(); err2 != err {
		t.Fatalf("Flush after failure: %v", err2)
	}
	// A writer that reports a short write without an error.
	w = pmxproto.NewWriter(shortWriter{})
	w.WritePacket(&pmxproto.Ok{ID: 1})
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "short write") {
		t.Fatalf("short write: %v", err)
	}
}

type shortWriter struct{}

func (shortWriter) Write(b []byte) (int, error) { return len(b) / 2, nil }
