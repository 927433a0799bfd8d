package pmxproto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// frame builds a packet with an arbitrary header and body.
func frame(id, typ uint8, body []byte) []byte {
	b := []byte{id, typ, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[2:], uint32(pmxproto.HeaderSize+len(body)))
	return append(b, body...)
}

func header(id, typ uint8, length uint32) []byte {
	b := []byte{id, typ, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[2:], length)
	return b
}

func TestFramingErrors(t *testing.T) {
	ok := frame(1, 1, nil)
	cases := []struct {
		name   string
		stream []byte
		reason string // substring of the error
		unexp  bool   // wraps io.ErrUnexpectedEOF
	}{
		{"length 0", header(1, 1, 0), "length 0 is less than the 6-byte header", false},
		{"length 5", header(1, 1, 5), "length 5 is less than", false},
		{"length over 16 MiB", header(1, 7, 16<<20+1), "length 16777217 exceeds the 16777216-byte packet limit", false},
		{"length 4 GiB", header(1, 7, 0xffffffff), "length 4294967295 exceeds", false},
		{"unknown type 13", frame(1, 13, nil), "unknown packet type 13", false},
		{"unknown type 255", frame(1, 255, []byte{1, 2}), "unknown packet type 255", false},
		{"header cut short", []byte{1, 1, 6}, "3 bytes into a packet header", true},
		{"body cut short", frame(1, 7, make([]byte, 40))[:30], "24 bytes into a 40-byte body", true},
		{"oversized body cut short", header(1, 1, 100), "0 bytes into a 94-byte body", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := pmxproto.NewReader(bytes.NewReader(append(append([]byte{}, ok...), c.stream...)))
			if _, err := r.ReadPacket(); err != nil {
				t.Fatalf("first packet: %v", err)
			}
			_, err := r.ReadPacket()
			var fe *pmxproto.FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v (%T), want *FrameError", err, err)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Errorf("error %q lacks %q", err, c.reason)
			}
			if fe.Offset != int64(len(ok)) {
				t.Errorf("Offset %d, want %d", fe.Offset, len(ok))
			}
			if errors.Is(err, io.ErrUnexpectedEOF) != c.unexp {
				t.Errorf("errors.Is(ErrUnexpectedEOF) = %v, want %v", !c.unexp, c.unexp)
			}
			if !pmxproto.IsFatal(err) {
				t.Error("IsFatal = false for a framing error")
			}
			// Sticky.
			if _, err2 := r.ReadPacket(); err2 != err {
				t.Errorf("second call: %v, want the same error", err2)
			}
		})
	}
}

func TestCleanEOF(t *testing.T) {
	r := pmxproto.NewReader(bytes.NewReader(nil))
	if _, err := r.ReadPacket(); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
	if !pmxproto.IsFatal(io.EOF) || pmxproto.IsFatal(nil) {
		t.Error("IsFatal wrong for io.EOF or nil")
	}
}

func TestReadError(t *testing.T) {
	boom := errors.New("connection reset")
	r := pmxproto.NewReader(io.MultiReader(bytes.NewReader(frame(1, 7, nil)[:4]), errReader{boom}))
	_, err := r.ReadPacket()
	var fe *pmxproto.FrameError
	if !errors.As(err, &fe) || !errors.Is(err, boom) {
		t.Fatalf("got %v, want a *FrameError wrapping the read error", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestSetMaxPacketSize(t *testing.T) {
	p := (&pmxproto.UploadChunk{ID: 1, Digest: digestOf("x"), Data: make([]byte, 100)}).Encode(nil)
	r := pmxproto.NewReader(bytes.NewReader(p))
	r.SetMaxPacketSize(len(p) - 1)
	if _, err := r.ReadPacket(); !pmxproto.IsFatal(err) || !strings.Contains(err.Error(), "exceeds the 137-byte packet limit") {
		t.Fatalf("got %v", err)
	}
	r = pmxproto.NewReader(bytes.NewReader(p))
	r.SetMaxPacketSize(len(p)) // inclusive
	if _, err := r.ReadPacket(); err != nil {
		t.Fatalf("packet of exactly the limit: %v", err)
	}
	r = pmxproto.NewReader(bytes.NewReader(p))
	r.SetMaxPacketSize(1 << 30) // clamped to MaxPacketSize
	if _, err := r.ReadPacket(); err != nil {
		t.Fatal(err)
	}
}

// TestMaxPacketInclusive: a packet of exactly 16 MiB is allowed.
func TestMaxPacketInclusive(t *testing.T) {
	data := make([]byte, pmxproto.MaxUploadData)
	data[0] = 1
	up := &pmxproto.UploadChunk{ID: 1, Digest: digestOf("whatever"), Data: data}
	b := up.Encode(nil)
	if len(b) != pmxproto.MaxPacketSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	p, err := pmxproto.NewReader(bytes.NewReader(b)).ReadPacket()
	if err != nil {
		t.Fatal(err)
	}
	if got := p.(*pmxproto.UploadChunk); len(got.Data) != pmxproto.MaxUploadData {
		t.Fatalf("data %d bytes", len(got.Data))
	}
	up.Data = append(data, 0)
	if err := up.Validate(); err == nil {
		t.Fatal("Validate accepted data over MaxUploadData")
	}
}

func TestBodyErrors(t *testing.T) {
	d := digestOf("hello")
	cb := func(mut func(b []byte) []byte) []byte {
		b := (&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: 1551863212,
			Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, ChunkSize: 4 << 20,
			BackupID: "backup1", Name: "foo.pxar"}).Encode(nil)
		return mut(b[pmxproto.HeaderSize:])
	}
	set := func(off int, v ...byte) func([]byte) []byte {
		return func(b []byte) []byte { copy(b[off:], v); return b }
	}
	cases := []struct {
		name   string
		typ    uint8
		body   []byte
		field  string
		offset int
		reason string
	}{
		{"Hello short", 0, []byte("PMXBCKUP"), "body", 0, "8 bytes, want exactly 12"},
		{"Hello bad magic", 0, []byte("PMXBCKUQ\x01\x00\x00\x00"), "magic", 0, `got "PMXBCKUQ", want "PMXBCKUP"`},
		{"Ok with body", 1, []byte{0}, "body", 0, "1 bytes, want exactly 0"},
		{"Error empty", 2, nil, "body", 0, "0 bytes, want at least 1"},
		{"Error reason not UTF-8", 2, []byte{0, 0xff, 0xfe}, "reason", 1, "not valid UTF-8"},
		{"GetHashList no length", 3, []byte{6}, "body", 0, "1 bytes, want at least 2"},
		{"GetHashList length too long", 3, []byte{7, 0, 'a', '.', 'f', 'i', 'd', 'x'}, "name_length", 0, "says 7 bytes follow, but 6 do"},
		{"GetHashList length too short", 3, []byte{5, 0, 'a', '.', 'f', 'i', 'd', 'x'}, "name_length", 0, "says 5 bytes follow, but 6 do"},
		{"GetHashList empty name", 3, []byte{0, 0}, "name_length", 0, "name is empty"},
		{"GetHashList NUL", 3, []byte{3, 0, 'a', 0, 'b'}, "name", 3, "contains a NUL byte"},
		{"HashListPart ragged", 4, make([]byte, 33), "body", 0, "not a whole number of records"},
		{"DownloadChunks empty", 5, nil, "body", 0, "0 bytes, want at least 32"},
		{"DownloadChunks ragged", 5, make([]byte, 65), "body", 0, "not a whole number"},
		{"Chunk without data", 6, make([]byte, 40), "body", 0, "40 bytes, want at least 41"},
		{"UploadChunk short digest", 7, make([]byte, 31), "body", 0, "31 bytes, want at least 33"},
		{"UploadChunk empty data", 7, d[:], "body", 0, "32 bytes, want at least 33 (digest and at least 1 data byte)"},
		{"CreateBackup short", 8, make([]byte, 23), "body", 0, "23 bytes, want at least 24"},
		{"CreateBackup too long", 8, make([]byte, 24+511), "body", 0, "535 bytes, want at most 534"},
		{"CreateBackup excess", 8, append(cb(set(0)), 'x'), "body", 0, "40 bytes, but id_length 7 and name_length 8 make 39"},
		{"CreateBackup incomplete", 8, cb(set(0))[:38], "body", 0, "38 bytes, but id_length 7 and name_length 8 make 39"},
		{"CreateBackup backup type", 8, cb(set(0, 3)), "backup_type", 0, "unknown backup type 3"},
		{"CreateBackup flags", 8, cb(set(10, 0x0d)), "flags", 10, "unknown bits 0x08 in 0x0d"},
		{"CreateBackup id traversal", 8, cb(set(24, '.', '.', '/', 'e', 't', 'c', 'x')), "id", 24, `backup id "../etcx" has '.' at byte 0`},
		{"CreateBackup id slash", 8, cb(set(25, '/')), "id", 25, `has '/' at byte 1`},
		{"CreateBackup empty id", 8, cb(func(b []byte) []byte { b[1] = 0; return append(b[:24], "foo.pxar"...) }), "id_length", 1, "backup id is 0 bytes"},
		{"CreateBackup name slash", 8, cb(set(31, 'a', '/', 'b')), "name", 32, `contains '/' at byte 1`},
		{"CreateBackup name NUL", 8, cb(set(31, 0)), "name", 31, `contains '\x00' at byte 0`},
		{"CreateBackup name not UTF-8", 8, cb(set(31, 0xc3, 0x28)), "name", 31, "not valid UTF-8"},
		{"CreateBackup empty name", 8, cb(func(b []byte) []byte { b[11] = 0; return b[:31] }), "name_length", 11, "file name is 0 bytes"},
		{"CreateBackup dynamic file_size", 8, cb(set(16, 1)), "file_size", 16, "1, but a dynamic index must have file_size 0"},
		{"CreateBackup fixed chunk_size 0", 8, cb(set(10, 0x01, 8, 0, 0, 0, 0)), "chunk_size", 12, "0 for a fixed index, want 1..16777178"},
		{"CreateBackup fixed chunk_size 16 MiB", 8, cb(set(10, 0x01, 8, 0, 0, 0, 1)), "chunk_size", 12, "16777216 for a fixed index"},
		{"CreateBackup timestamp", 8, cb(set(2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)), "timestamp", 2, "18446744073709551615 is after 9999-12-31T23:59:59Z"},
		{"BackupCreated length mismatch", 9, []byte{9, 0, 'a'}, "path_length", 0, "says 9 bytes follow, but 1 do"},
		{"BackupDataFixed empty", 10, nil, "body", 0, "0 bytes, want at least 40"},
		{"BackupDataFixed trailing", 10, make([]byte, 41), "body", 0, "41 bytes, not a whole number of records"},
		{"BackupDataDynamic trailing", 11, make([]byte, 79), "body", 0, "79 bytes, not a whole number"},
		{"BackupFinished with body", 12, []byte{1, 2, 3}, "body", 0, "3 bytes, want exactly 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			next := frame(9, 1, nil)
			r := pmxproto.NewReader(bytes.NewReader(append(frame(42, c.typ, c.body), next...)))
			_, err := r.ReadPacket()
			var be *pmxproto.BodyError
			if !errors.As(err, &be) {
				t.Fatalf("got %v (%T), want *BodyError", err, err)
			}
			if pmxproto.IsFatal(err) {
				t.Error("IsFatal = true for a body error")
			}
			if be.ID != 42 || be.Type != pmxproto.Type(c.typ) || be.Field != c.field || be.Offset != c.offset {
				t.Errorf("id %d type %v field %q offset %d; want 42 %v %q %d (%v)",
					be.ID, be.Type, be.Field, be.Offset, pmxproto.Type(c.typ), c.field, c.offset, err)
			}
			if !strings.Contains(err.Error(), c.reason) {
				t.Errorf("error %q lacks %q", err, c.reason)
			}
			reply := be.Reply()
			if reply.ID != 42 || reply.Code != pmxproto.ErrorGeneric || reply.Validate() != nil {
				t.Errorf("Reply = %+v", reply)
			}
			// The stream stays in sync.
			p, err := r.ReadPacket()
			if err != nil || p.PacketType() != pmxproto.TypeOk || p.PacketID() != 9 {
				t.Fatalf("packet after the bad one: %v, %v", p, err)
			}
		})
	}
}

// TestOversizedBodyNotAllocated: a header announcing 16 MiB for a packet
// type whose body must be empty is skipped without allocating the body.
func TestOversizedBodyNotAllocated(t *testing.T) {
	stream := io.MultiReader(
		bytes.NewReader(header(1, uint8(pmxproto.TypeOk), pmxproto.MaxPacketSize)),
		io.LimitReader(zeros{}, pmxproto.MaxBodySize),
		bytes.NewReader(frame(2, 1, nil)))
	r := pmxproto.NewReader(stream)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := r.ReadPacket()
	runtime.ReadMemStats(&after)
	var be *pmxproto.BodyError
	if !errors.As(err, &be) {
		t.Fatalf("got %v, want *BodyError", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("allocated %d bytes to skip a bad body", n)
	}
	if p, err := r.ReadPacket(); err != nil || p.PacketID() != 2 {
		t.Fatalf("next packet: %v %v", p, err)
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// TestDecodedPacketsOwnMemory: a packet stays intact after later reads.
func TestDecodedPacketsOwnMemory(t *testing.T) {
	a := &pmxproto.UploadChunk{ID: 1, Digest: digestOf("aaaa"), Data: []byte("aaaa")}
	b := &pmxproto.UploadChunk{ID: 2, Digest: digestOf("bbbb"), Data: []byte("bbbb")}
	r := pmxproto.NewReader(bytes.NewReader(b.Encode(a.Encode(nil))))
	p1, _ := r.ReadPacket()
	p2, _ := r.ReadPacket()
	if string(p1.(*pmxproto.UploadChunk).Data) != "aaaa" || string(p2.(*pmxproto.UploadChunk).Data) != "bbbb" {
		t.Fatal("packets share memory")
	}
}

// A released chunk buffer is filled again for the next chunk, and the
// packets read are the packets written either way.
func TestReaderRelease(t *testing.T) {
	var stream bytes.Buffer
	w := pmxproto.NewWriter(&stream)
	var want []pmxproto.Packet
	for i := range 6 {
		data := bytes.Repeat([]byte{byte(i + 1)}, 100<<10-i*1000)
		var p pmxproto.Packet = &pmxproto.UploadChunk{ID: uint8(i), Digest: pmxproto.Digest{byte(i)}, Data: data}
		if i%2 == 1 {
			p = &pmxproto.Chunk{ID: uint8(i), Offset: uint64(i), Digest: pmxproto.Digest{byte(i)}, Data: data}
		}
		if err := w.WritePacket(p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	w.Flush()
	r := pmxproto.NewReader(&stream)
	var prev []byte
	for i, wp := range want {
		p, err := r.ReadPacket()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(p, wp) {
			t.Fatalf("packet %d differs", i)
		}
		var data []byte
		switch p := p.(type) {
		case *pmxproto.UploadChunk:
			data = p.Data
		case *pmxproto.Chunk:
			data = p.Data
		}
		if i > 0 && &data[0] != &prev[0] {
			t.Errorf("packet %d: a new buffer, not the released one", i)
		}
		prev = data
		r.Release(p)
	}
	if _, err := r.ReadPacket(); err != io.EOF {
		t.Fatalf("after the last packet: %v", err)
	}
}

// BenchmarkReadUploadChunk is the PMXBCKUP backup stream: 4 MiB uploads,
// each buffer released once handled, or not.
func BenchmarkReadUploadChunk(b *testing.B) {
	var packet bytes.Buffer
	w := pmxproto.NewWriter(&packet)
	w.WritePacket(&pmxproto.UploadChunk{Data: make([]byte, 4<<20)})
	w.Flush()
	for _, release := range []bool{false, true} {
		b.Run(fmt.Sprintf("release=%v", release), func(b *testing.B) {
			b.SetBytes(int64(packet.Len()))
			r := pmxproto.NewReader(&repeat{b: packet.Bytes()})
			for range b.N {
				p, err := r.ReadPacket()
				if err != nil {
					b.Fatal(err)
				}
				if release {
					r.Release(p)
				}
			}
		})
	}
}

// repeat reads b over and over.
type repeat struct {
	b   []byte
	off int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	return n, nil
}

// A refused type's body is skipped unread, answered with a pmxproto.BodyError, and
// the next packet is read.
func TestReaderSetRefused(t *testing.T) {
	var b []byte
	b = (&pmxproto.HashListPart{ID: 3, Digests: make([]pmxproto.Digest, 1000)}).Encode(b)
	b = (&pmxproto.Chunk{ID: 4, Data: []byte("x")}).Encode(b)
	b = (&pmxproto.DownloadChunks{ID: 5, Digests: make([]pmxproto.Digest, 1)}).Encode(b)
	r := pmxproto.NewReader(bytes.NewReader(b))
	r.SetRefused(pmxproto.TypeHashListPart, pmxproto.TypeChunk)
	for _, want := range []pmxproto.Type{pmxproto.TypeHashListPart, pmxproto.TypeChunk} {
		var be *pmxproto.BodyError
		if _, err := r.ReadPacket(); !errors.As(err, &be) || be.Type != want {
			t.Fatalf("%v: %v, want a pmxproto.BodyError", want, err)
		}
	}
	if p, err := r.ReadPacket(); err != nil || p.PacketType() != pmxproto.TypeDownloadChunks {
		t.Fatalf("%v %v, want pmxproto.DownloadChunks", p, err)
	}
	if r.Offset() != int64(len(b)) {
		t.Fatalf("offset %d, want %d", r.Offset(), len(b))
	}
}
