package caproto

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// unhex decodes hex with spaces and newlines in it.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func seqID(start byte) (id [IDSize]byte) {
	for i := range id {
		id[i] = start + byte(i)
	}
	return id
}

// golden frames, written by hand from the layouts in
// reference/casync-protocol.md §1.2–1.4 (the two HELLOs are the bytes
// captured from casync in §1.6).
var golden = []struct {
	name string
	msg  Message
	hex  string
}{
	{"hello make local index remote store", &Hello{Features: PushChunks},
		"18 00 00 00 00 00 00 00  ee fb a5 8c 94 d0 71 3c  00 02 00 00 00 00 00 00"},
	{"hello extract remote index and store", &Hello{Features: PullChunks | PullIndex},
		"18 00 00 00 00 00 00 00  ee fb a5 8c 94 d0 71 3c  c0 00 00 00 00 00 00 00"},
	{"hello make remote index", &Hello{Features: PushChunks | PushIndex | PushIndexChunks},
		"18 00 00 00 00 00 00 00  ee fb a5 8c 94 d0 71 3c  00 0e 00 00 00 00 00 00"},
	{"index 3 bytes", &Index{Data: []byte("abc")},
		"13 00 00 00 00 00 00 00  f8 27 3e 2b dd 91 2a b3  61 62 63"},
	{"index eof", &IndexEOF{},
		"10 00 00 00 00 00 00 00  f5 18 37 04 f1 32 09 4f"},
	{"archive 1 byte", &Archive{Data: []byte{0xff}},
		"11 00 00 00 00 00 00 00  c5 dc ed 69 8a 42 d6 95  ff"},
	{"archive eof", &ArchiveEOF{},
		"10 00 00 00 00 00 00 00  ad cb 24 3f 66 ef 0b 45"},
	{"request low priority 1 id", &Request{Flags: 0, IDs: [][IDSize]byte{seqID(0)}},
		`38 00 00 00 00 00 00 00  10 92 9d f8 e0 27 b4 8a  00 00 00 00 00 00 00 00
		 00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  10 11 12 13 14 15 16 17  18 19 1a 1b 1c 1d 1e 1f`},
	{"request high priority 2 ids", &Request{Flags: RequestHighPriority, IDs: [][IDSize]byte{seqID(0), seqID(0xe0)}},
		`58 00 00 00 00 00 00 00  10 92 9d f8 e0 27 b4 8a  01 00 00 00 00 00 00 00
		 00 01 02 03 04 05 06 07  08 09 0a 0b 0c 0d 0e 0f  10 11 12 13 14 15 16 17  18 19 1a 1b 1c 1d 1e 1f
		 e0 e1 e2 e3 e4 e5 e6 e7  e8 e9 ea eb ec ed ee ef  f0 f1 f2 f3 f4 f5 f6 f7  f8 f9 fa fb fc fd fe ff`},
	{"chunk compressed", &Chunk{Flags: ChunkCompressed, ID: seqID(0x20), Data: []byte{0x28, 0xb5, 0x2f, 0xfd}},
		`3c 00 00 00 00 00 00 00  8c bc 84 0a 18 dd 13 52  01 00 00 00 00 00 00 00
		 20 21 22 23 24 25 26 27  28 29 2a 2b 2c 2d 2e 2f  30 31 32 33 34 35 36 37  38 39 3a 3b 3c 3d 3e 3f
		 28 b5 2f fd`},
	{"chunk raw 1 byte", &Chunk{Flags: 0, ID: seqID(0x20), Data: []byte{'x'}},
		`39 00 00 00 00 00 00 00  8c bc 84 0a 18 dd 13 52  00 00 00 00 00 00 00 00
		 20 21 22 23 24 25 26 27  28 29 2a 2b 2c 2d 2e 2f  30 31 32 33 34 35 36 37  38 39 3a 3b 3c 3d 3e 3f
		 78`},
	{"missing", &Missing{ID: seqID(0x40)},
		`30 00 00 00 00 00 00 00  6c 7b 2b c8 fa f9 10 d0
		 40 41 42 43 44 45 46 47  48 49 4a 4b 4c 4d 4e 4f  50 51 52 53 54 55 56 57  58 59 5a 5b 5c 5d 5e 5f`},
	{"goodbye", &Goodbye{},
		"10 00 00 00 00 00 00 00  c3 86 36 1a bf 5d 20 ad"},
	{"abort EACCES", &Abort{Errno: 13, Reason: "Permission denied"},
		`2a 00 00 00 00 00 00 00  52 a3 fe 7e 6b 13 d9 e7  0d 00 00 00 00 00 00 00
		 50 65 72 6d 69 73 73 69 6f 6e 20 64 65 6e 69 65 64 00`},
	{"abort empty reason", &Abort{Errno: 0, Reason: ""},
		`19 00 00 00 00 00 00 00  52 a3 fe 7e 6b 13 d9 e7  00 00 00 00 00 00 00 00  00`},
}

func TestGoldenEncode(t *testing.T) {
	for _, g := range golden {
		want := unhex(t, g.hex)
		if got := g.msg.Encode(nil); !bytes.Equal(got, want) {
			t.Errorf("%s: Encode\n got %x\nwant %x", g.name, got, want)
		}
		// Append-style: existing bytes are kept.
		if got := g.msg.Encode([]byte("prefix")); !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("%s: Encode does not append to dst", g.name)
		}
		if err := Validate(g.msg); err != nil {
			t.Errorf("%s: Validate: %v", g.name, err)
		}
	}
}

func TestGoldenDecode(t *testing.T) {
	for _, g := range golden {
		r := NewReader(bytes.NewReader(unhex(t, g.hex)), 0)
		m, err := r.ReadMessage()
		if err != nil {
			t.Errorf("%s: ReadMessage: %v", g.name, err)
			continue
		}
		if !reflect.DeepEqual(m, g.msg) {
			t.Errorf("%s: decoded %#v, want %#v", g.name, m, g.msg)
		}
		if _, err := r.ReadMessage(); err != io.EOF {
			t.Errorf("%s: after the frame: %v, want io.EOF", g.name, err)
		}
	}
}

// TestStream reads every golden frame from one stream, in one-byte reads,
// re-encoding each as it comes: the stream must come back byte for byte.
func TestStream(t *testing.T) {
	var stream []byte
	for _, g := range golden {
		stream = append(stream, unhex(t, g.hex)...)
	}
	r := NewReader(&oneByteReader{bytes.NewReader(stream)}, 0)
	var again []byte
	for i := range golden {
		m, err := r.ReadMessage()
		if err != nil {
			t.Fatalf("frame %d (%s): %v", i, golden[i].name, err)
		}
		if m.Type() != golden[i].msg.Type() {
			t.Fatalf("frame %d: type %s, want %s", i, m.Type(), golden[i].msg.Type())
		}
		again = m.Encode(again)
	}
	if _, err := r.ReadMessage(); err != io.EOF {
		t.Fatalf("end of stream: %v, want io.EOF", err)
	}
	if !bytes.Equal(again, stream) {
		t.Fatal("re-encoded stream differs from the input")
	}
	if r.Offset() != int64(len(stream)) {
		t.Fatalf("Offset %d, want %d", r.Offset(), len(stream))
	}
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// frame builds a frame from a declared size, a type and a body.
func frame(size uint64, t Type, body ...[]byte) []byte {
	b := appendHeader(nil, int(size), t)
	for _, x := range body {
		b = append(b, x...)
	}
	return b
}

func le64(v uint64) []byte { return appendHeader(nil, int(v), 0)[:8] }

func zeros(n int) []byte { return make([]byte, n) }

// TestRejections: one test per check casync applies on receipt (§1.3).
func TestRejections(t *testing.T) {
	id := zeros(IDSize)
	tests := []struct {
		name  string
		input []byte
		max   int
		err   error
		msg   string // part of the error text
	}{
		{"size below header", frame(15, TypeGoodbye), 0, ErrMalformed, "smaller than the 16-byte header"},
		{"size zero", frame(0, TypeGoodbye), 0, ErrMalformed, "size 0"},
		{"size above 16 MiB", frame(MaxFrameSize+1, TypeChunk), 0, ErrFrameTooLarge, "16777217 is above the 16777216-byte limit"},
		{"size above reader limit", frame(1025, TypeIndex, zeros(1009)), 1024, ErrFrameTooLarge, "above the 1024-byte limit"},
		{"size 2^64-1", frame(1<<64-1, TypeIndex), 0, ErrFrameTooLarge, ""},
		{"unknown type", frame(16, Type(0x1234)), 0, ErrUnknownType, "0x0000000000001234"},
		{"hello too long", frame(32, TypeHello, le64(0x40), le64(0)), 0, ErrMalformed, "HELLO frames are exactly 24 bytes"},
		{"hello too short", frame(16, TypeHello), 0, ErrMalformed, "exactly 24"},
		{"hello flags 0", frame(24, TypeHello, le64(0)), 0, ErrMalformed, "feature word is 0"},
		{"hello flags all ones", frame(24, TypeHello, le64(1<<64-1)), 0, ErrMalformed, "0xffffffffffffffff"},
		{"hello unknown bit", frame(24, TypeHello, le64(0x2040)), 0, ErrUnsupportedFeatures, "bits 0x2000 outside 0x1fff"},
		{"index empty", frame(16, TypeIndex), 0, ErrMalformed, "at least 17"},
		{"archive empty", frame(16, TypeArchive), 0, ErrMalformed, "at least 17"},
		{"index eof with body", frame(17, TypeIndexEOF, zeros(1)), 0, ErrMalformed, "exactly 16"},
		{"archive eof with body", frame(24, TypeArchiveEOF, zeros(8)), 0, ErrMalformed, "exactly 16"},
		{"goodbye with body", frame(17, TypeGoodbye, zeros(1)), 0, ErrMalformed, "exactly 16"},
		{"request without ids", frame(24, TypeRequest, le64(0)), 0, ErrMalformed, "at least 56"},
		{"request short id", frame(55, TypeRequest, le64(0), zeros(31)), 0, ErrMalformed, "at least 56"},
		{"request ragged ids", frame(57, TypeRequest, le64(0), zeros(33)), 0, ErrMalformed, "not a multiple of 32 (1 left over)"},
		{"request unknown flag", frame(56, TypeRequest, le64(2), id), 0, ErrMalformed, "REQUEST flags 0x2"},
		{"chunk without data", frame(56, TypeChunk, le64(1), id), 0, ErrMalformed, "at least 57"},
		{"chunk unknown flag", frame(57, TypeChunk, le64(3), id, zeros(1)), 0, ErrMalformed, "CHUNK flags 0x3"},
		{"missing short", frame(47, TypeMissing, zeros(31)), 0, ErrMalformed, "exactly 48"},
		{"missing long", frame(49, TypeMissing, zeros(33)), 0, ErrMalformed, "exactly 48"},
		{"abort without text", frame(24, TypeAbort, le64(0)), 0, ErrMalformed, "at least 25"},
		{"abort errno 2^31-1", frame(25, TypeAbort, le64(1<<31-1), zeros(1)), 0, ErrMalformed, "errno 2147483647"},
		{"abort errno 2^32+13", frame(25, TypeAbort, le64(1<<32+13), zeros(1)), 0, ErrMalformed, "errno 4294967309"},
		{"abort not NUL-terminated", frame(26, TypeAbort, le64(13), []byte("ab")), 0, ErrMalformed, "does not end in NUL"},
		{"abort newline", frame(28, TypeAbort, le64(13), []byte("ab\n\x00")), 0, ErrMalformed, "byte 2 is 0x0a"},
		{"abort tab", frame(26, TypeAbort, le64(13), []byte("\t\x00")), 0, ErrMalformed, "byte 0 is 0x09"},
		{"abort inner NUL", frame(28, TypeAbort, le64(13), []byte("a\x00b\x00")), 0, ErrMalformed, "byte 1 is 0x00"},
		{"truncated header", frame(24, TypeHello)[:10], 0, io.ErrUnexpectedEOF, "after 10 of the 16 header bytes"},
		{"truncated body", frame(24, TypeHello, zeros(3)), 0, io.ErrUnexpectedEOF, "got 3 of 8 body bytes"},
		{"truncated large body", frame(200000, TypeIndex, zeros(70000)), 0, io.ErrUnexpectedEOF, "got 70000 of 199984"},
	}
	for _, tc := range tests {
		r := NewReader(bytes.NewReader(tc.input), tc.max)
		m, err := r.ReadMessage()
		if err == nil {
			t.Errorf("%s: accepted as %#v", tc.name, m)
			continue
		}
		var fe *FrameError
		if !errors.As(err, &fe) || !errors.Is(err, tc.err) {
			t.Errorf("%s: error %v (%T), want a *FrameError wrapping %v", tc.name, err, err, tc.err)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.msg)
		}
		if fe.Offset != 0 {
			t.Errorf("%s: offset %d, want 0", tc.name, fe.Offset)
		}
		if Errno(err) == 0 {
			t.Errorf("%s: Errno 0", tc.name)
		}
		// Sticky: the stream is out of step after a bad frame.
		if _, err2 := r.ReadMessage(); err2 != err {
			t.Errorf("%s: second ReadMessage gave %v, want the same error", tc.name, err2)
		}
	}
}

func TestErrorOffsetAfterGoodFrames(t *testing.T) {
	in := append((&Hello{Features: PullChunks}).Encode(nil), (&Goodbye{}).Encode(nil)...)
	in = append(in, frame(17, TypeGoodbye, zeros(1))...)
	r := NewReader(bytes.NewReader(in), 0)
	for range 2 {
		if _, err := r.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := r.ReadMessage()
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Offset != 40 || fe.Type != TypeGoodbye || fe.Size != 17 {
		t.Fatalf("got %v (%+v), want a GOODBYE error at offset 40, size 17", err, fe)
	}
	if want := "caproto: frame at offset 40: GOODBYE (size 17): GOODBYE frames are exactly 16 bytes"; err.Error() != want {
		t.Fatalf("error text %q, want %q", err, want)
	}
}

// TestLyingHeaderCostsLittle: a header announcing a 16 MiB frame followed by
// a few bytes must not make the Reader allocate 16 MiB.
func TestLyingHeaderCostsLittle(t *testing.T) {
	in := frame(MaxFrameSize, TypeChunk, le64(1), zeros(IDSize), zeros(100))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := NewReader(bytes.NewReader(in), 0)
	_, err := r.ReadMessage()
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v, want unexpected EOF", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("allocated %d bytes for a truncated frame", n)
	}
}

func TestLargeFrames(t *testing.T) {
	data := bytes.Repeat([]byte{0xab}, MaxChunkData)
	c := &Chunk{Flags: ChunkCompressed, ID: seqID(1), Data: data}
	if err := Validate(c); err != nil {
		t.Fatalf("largest CHUNK refused: %v", err)
	}
	enc := c.Encode(nil)
	if len(enc) != MaxFrameSize {
		t.Fatalf("largest CHUNK is %d bytes, want %d", len(enc), MaxFrameSize)
	}
	ids := make([][IDSize]byte, MaxRequestIDs)
	if err := Validate(&Request{IDs: ids}); err != nil {
		t.Fatalf("largest REQUEST refused: %v", err)
	}
	in := append(enc, (&Request{IDs: ids}).Encode(nil)...)
	r := NewReader(bytes.NewReader(in), 0)
	m, err := r.ReadMessage()
	if err != nil || !bytes.Equal(m.(*Chunk).Data, data) {
		t.Fatalf("reading the largest CHUNK: %v", err)
	}
	m, err = r.ReadMessage()
	if err != nil || len(m.(*Request).IDs) != MaxRequestIDs {
		t.Fatalf("reading the largest REQUEST: %v", err)
	}

	tooBig := []Message{
		&Chunk{ID: seqID(1), Data: append(data, 0)},
		&Index{Data: make([]byte, MaxFileData+1)},
		&Request{IDs: make([][IDSize]byte, MaxRequestIDs+1)},
	}
	for _, m := range tooBig {
		if err := Validate(m); !errors.Is(err, ErrFrameTooLarge) {
			t.Errorf("%s of %d bytes: Validate %v, want ErrFrameTooLarge", m.Type(), m.frameSize(), err)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	tests := []struct {
		msg Message
		err error
	}{
		{&Hello{}, ErrMalformed},
		{&Hello{Features: 1 << 13}, ErrUnsupportedFeatures},
		{&Index{}, ErrMalformed},
		{&Archive{Data: []byte{}}, ErrMalformed},
		{&Request{Flags: RequestHighPriority}, ErrMalformed},
		{&Request{Flags: 2, IDs: make([][IDSize]byte, 1)}, ErrMalformed},
		{&Chunk{Flags: 2, Data: []byte{1}}, ErrMalformed},
		{&Chunk{}, ErrMalformed},
		{&Abort{Errno: MaxAbortErrno}, ErrMalformed},
		{&Abort{Reason: "two\nlines"}, ErrMalformed},
	}
	for _, tc := range tests {
		err := Validate(tc.msg)
		var fe *FrameError
		if !errors.Is(err, tc.err) || !errors.As(err, &fe) || fe.Offset != -1 {
			t.Errorf("Validate(%#v) = %v, want a *FrameError at offset -1 wrapping %v", tc.msg, err, tc.err)
		}
	}
}

func TestNewAbort(t *testing.T) {
	a := NewAbort(1<<31, "bad\tthing\nhappened\x00")
	if a.Errno != 0 || a.Reason != "bad thing happened " {
		t.Fatalf("NewAbort = %+v", a)
	}
	if err := Validate(a); err != nil {
		t.Fatal(err)
	}
	long := NewAbort(5, strings.Repeat("é", MaxFrameSize))
	if err := Validate(long); err != nil {
		t.Fatalf("long reason: %v", err)
	}
	if !strings.HasSuffix(long.Reason, "é") || long.frameSize() > MaxFrameSize {
		t.Fatalf("long reason cut badly: %d bytes, ends %q", len(long.Reason), long.Reason[len(long.Reason)-4:])
	}
	// UTF-8 above 0x7f is allowed: casync only refuses bytes below 0x20.
	in := (&Abort{Errno: 2, Reason: "Datei fehlt: ü"}).Encode(nil)
	m, err := NewReader(bytes.NewReader(in), 0).ReadMessage()
	if err != nil || m.(*Abort).Reason != "Datei fehlt: ü" || m.(*Abort).Errno != 2 {
		t.Fatalf("UTF-8 abort: %v %+v", err, m)
	}
}

func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	var want []byte
	for _, g := range golden {
		if err := w.WriteMessage(g.msg); err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		want = g.msg.Encode(want)
	}
	if out.Len() != 0 || w.Buffered() != len(want) {
		t.Fatalf("small frames written before Flush: %d written, %d buffered", out.Len(), w.Buffered())
	}
	if err := w.WriteMessage(&Request{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty REQUEST: %v", err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatal("Writer output differs from the encoded frames")
	}
	// A large frame goes out without Flush.
	out.Reset()
	if err := w.WriteMessage(&Index{Data: make([]byte, flushThreshold)}); err != nil {
		t.Fatal(err)
	}
	if out.Len() != HeaderSize+flushThreshold || w.Buffered() != 0 {
		t.Fatalf("large frame: %d written, %d buffered", out.Len(), w.Buffered())
	}
	// Write errors stick.
	fw := NewWriter(failWriter{})
	fw.WriteMessage(&Goodbye{})
	if err := fw.Flush(); err == nil || fw.WriteMessage(&Goodbye{}) != err {
		t.Fatalf("write error not sticky: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestCheckHandshake(t *testing.T) {
	ok := []struct{ client, server Features }{
		// §1.6, as observed between casync client and server.
		{0x40, 0x1}, {0xc0, 0x5}, {0x80, 0x4}, {0x100, 0x10},
		{0xe00, 0xa}, {0x1000, 0x20}, {0x200, 0x2}, {0x400, 0x8},
	}
	for _, c := range ok {
		if err := CheckHandshake(c.server, c.client); err != nil {
			t.Errorf("server %s, client %s: %v", c.server, c.client, err)
		}
		if err := CheckHandshake(c.client, c.server); err != nil {
			t.Errorf("client %s, server %s: %v", c.client, c.server, err)
		}
		if err := c.server.CheckLocal(); err != nil {
			t.Errorf("server %s: CheckLocal: %v", c.server, err)
		}
	}
	bad := []struct {
		local, remote Features
		err           error
		msg           string
	}{
		{0x1, 0xc0, ErrIncompatible, "remote wants PULL_INDEX"},     // desync pull and casync list
		{0x40, 0x4, ErrIncompatible, "local wants PULL_CHUNKS"},     // server without a store
		{0xa, 0xa00, ErrIncompatible, "PUSH_INDEX_CHUNKS without"},  // no PUSH_INDEX
		{0x1, 0x2, ErrIncompatible, "neither"},                      // nobody wants anything
		{0x1, 0x2040, ErrUnsupportedFeatures, "outside 0x1fff"},     // unknown bit
		{0x2, 0x800 | 0x400 | 0x200, ErrIncompatible, "PUSH_INDEX"}, // server lacks WRITABLE_INDEX
	}
	for _, c := range bad {
		err := CheckHandshake(c.local, c.remote)
		if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("CheckHandshake(%s, %s) = %v, want %v saying %q", c.local, c.remote, err, c.err, c.msg)
		}
	}
	for _, f := range []Features{0, ReadableIndex | WritableIndex, ReadableArchive | WritableArchive | ReadableStore, 0x4000} {
		if err := f.CheckLocal(); err == nil {
			t.Errorf("CheckLocal(%s) accepted", f)
		}
	}
	if Errno(CheckHandshake(0x1, 0xc0)) != EBADE || Errno(CheckHandshake(1, 1<<20)) != EPROTONOSUPPORT || Errno(io.EOF) != 0 {
		t.Error("Errno mapping of handshake errors")
	}
}

func TestStrings(t *testing.T) {
	if s := (PullChunks | PullIndex).String(); s != "PULL_CHUNKS|PULL_INDEX" {
		t.Errorf("Features.String = %q", s)
	}
	if s := Features(0x4001).String(); s != "READABLE_STORE|0x4000" {
		t.Errorf("Features.String = %q", s)
	}
	if Features(0).String() != "0" || TypeAbort.String() != "ABORT" || Type(1).String() != "0x0000000000000001" {
		t.Error("String of zero features or types")
	}
	if !TypeMissing.Known() || Type(7).Known() {
		t.Error("Type.Known")
	}
}
