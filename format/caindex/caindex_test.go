package caindex

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

func id(b byte) (x [IDSize]byte) {
	for i := range x {
		x[i] = b
	}
	return x
}

// refHead is the first 64 bytes of the real 1,000,000-byte blob index in
// reference/casync-protocol.md §5, copied from its hexdump.
const refHead = `
3000 0000 0000 0000 f99f 127b 9c4d 8296
0000 0000 0000 00b0 0040 0000 0000 0000
0000 0100 0000 0000 0000 0400 0000 0000
ffff ffff ffff ffff 7d41 172f 119e 5be7`

// refTail is the last 40 bytes of that file (19 items, 864 bytes), from
// offsets 0x338 to 0x35f of the same hexdump.
const refTail = `
                    0000 0000 0000 0000
0000 0000 0000 0000 3000 0000 0000 0000
3003 0000 0000 0000 d1ec 4955 0e05 4f4b`

// TestGoldenReferenceFile rebuilds the reference's 864-byte index: its
// header and tail bytes are fixed by the hexdump, item 0 is "end=35643,
// id=d203c5ac aaad9782…" (the rest of that id and the other 18 items are
// made up, as the dump elides them).
func TestGoldenReferenceFile(t *testing.T) {
	h, err := BlobHeader(SHA512_256, DefaultChunkSizeMin, DefaultChunkSizeAvg, DefaultChunkSizeMax)
	if err != nil {
		t.Fatal(err)
	}
	first := [IDSize]byte{0xd2, 0x03, 0xc5, 0xac, 0xaa, 0xad, 0x97, 0x82}
	entries := []Entry{{Start: 0, End: 35643, ID: first}}
	for i := 1; i < 19; i++ {
		prev := entries[i-1].End
		entries = append(entries, Entry{Start: prev, End: prev + 50000 + uint64(i), ID: id(byte(i))})
	}
	var buf bytes.Buffer
	if err := Write(&buf, h, entries); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	if len(file) != 864 || FileSize(19) != 864 {
		t.Fatalf("file is %d bytes (FileSize %d), want 864", len(file), FileSize(19))
	}
	if want := unhex(t, refHead); !bytes.Equal(file[:64], want) {
		t.Errorf("head\n got %x\nwant %x", file[:64], want)
	}
	if want := unhex(t, "3b8b 0000 0000 0000 d203 c5ac aaad 9782"); !bytes.Equal(file[64:80], want) {
		t.Errorf("item 0 starts %x, want %x", file[64:80], want)
	}
	if want := unhex(t, refTail); !bytes.Equal(file[824:], want) {
		t.Errorf("tail\n got %x\nwant %x", file[824:], want)
	}

	x, err := Parse(bytes.NewReader(file), 0)
	if err != nil {
		t.Fatal(err)
	}
	if x.Header != h || x.Digest() != SHA512_256 || x.Header.Flags != 0xb000000000000000 {
		t.Errorf("header %v", x.Header)
	}
	if len(x.Chunks) != 19 || x.Chunks[0] != entries[0] || x.Chunks[18] != entries[18] || x.Size() != entries[18].End {
		t.Errorf("parsed %d chunks, size %d", len(x.Chunks), x.Size())
	}
}

// TestGoldenEmpty: an empty blob gives a 104-byte index with tail size 56
// (§5), written here byte by byte from the layout.
func TestGoldenEmpty(t *testing.T) {
	want := unhex(t, `
		3000000000000000 f99f127b9c4d8296 0000000000000090 0004000000000000
		0010000000000000 0040000000000000 ffffffffffffffff 7d41172f119e5be7
		0000000000000000 0000000000000000 3000000000000000 3800000000000000
		d1ec49550e054f4b`)
	h, err := BlobHeader(SHA256, 1024, 4096, 16384)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, h, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("empty index\n got %x\nwant %x", buf.Bytes(), want)
	}
	x, err := Parse(bytes.NewReader(want), 0)
	if err != nil || len(x.Chunks) != 0 || x.Size() != 0 || x.Digest() != SHA256 {
		t.Fatalf("Parse: %v %+v", err, x)
	}
}

// TestGoldenTwoItems: two items, written out by hand from the §5 table.
func TestGoldenTwoItems(t *testing.T) {
	want := unhex(t, `
		3000000000000000 f99f127b9c4d8296 0000000000000030 0100000000000000
		0200000000000000 0300000000000000 ffffffffffffffff 7d41172f119e5be7
		0200000000000000 1111111111111111111111111111111111111111111111111111111111111111
		0500000000000000 2222222222222222222222222222222222222222222222222222222222222222
		0000000000000000 0000000000000000 3000000000000000 8800000000000000
		d1ec49550e054f4b`)
	x, err := Parse(bytes.NewReader(want), 0)
	if err != nil {
		t.Fatal(err)
	}
	wantHeader := Header{Flags: FlagSHA512_256 | FlagExcludeFile, ChunkSizeMin: 1, ChunkSizeAvg: 2, ChunkSizeMax: 3}
	wantChunks := []Entry{{0, 2, id(0x11)}, {2, 5, id(0x22)}}
	if x.Header != wantHeader || len(x.Chunks) != 2 || x.Chunks[0] != wantChunks[0] || x.Chunks[1] != wantChunks[1] {
		t.Fatalf("parsed %+v", x)
	}
	if x.Chunks[1].Size() != 3 {
		t.Fatalf("Size of chunk 1: %d", x.Chunks[1].Size())
	}
	var buf bytes.Buffer
	if n, err := x.WriteTo(&buf); err != nil || n != int64(len(want)) || !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteTo: %d %v\n got %x\nwant %x", n, err, buf.Bytes(), want)
	}
}

// build makes an index file with n chunks of the given size under h.
func build(t testing.TB, h Header, n int, size uint64) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := w.Add(id(byte(i+1)), size); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var testHeader = Header{Flags: FlagSHA512_256, ChunkSizeMin: 16, ChunkSizeAvg: 64, ChunkSizeMax: 256}

func put(b []byte, off int, v uint64) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint64(c[off:], v)
	return c
}

// TestRejections: every check casync's reader makes, plus truncation and
// the size limit, on a 3-item index (items at 64, 104, 144; tail at 184).
func TestRejections(t *testing.T) {
	good := build(t, testHeader, 3, 100)
	if len(good) != 224 {
		t.Fatalf("fixture is %d bytes", len(good))
	}
	tests := []struct {
		name  string
		input []byte
		max   int64
		err   error
		off   int64
		field string
		msg   string
	}{
		{"empty input", nil, 0, ErrTruncated, 0, "", "inside the header (0 of its 64 bytes)"},
		{"half a header", good[:30], 0, ErrTruncated, 30, "", "inside the header"},
		{"header only", good[:64], 0, ErrTruncated, 64, "", "inside item[0] or the tail (0 of its 40 bytes)"},
		{"half an item", good[:120], 0, ErrTruncated, 120, "", "inside item[1] or the tail (16 of its 40 bytes)"},
		{"no tail", good[:184], 0, ErrTruncated, 184, "", "item[3] or the tail"},
		{"half a tail", good[:223], 0, ErrTruncated, 223, "", "39 of its 40"},
		{"header.size", put(good, 0, 56), 0, ErrMalformed, 0, "header.size", "56, want 48"},
		{"header.type", put(good, 8, TypeTable), 0, ErrMalformed, 8, "header.type", "CA_FORMAT_INDEX"},
		{"unknown flag", put(good, 16, 1<<40), 0, ErrUnsupported, 16, "feature_flags", "unknown bits 0x0000010000000000"},
		{"flags all ones", put(good, 16, 1<<64-1), 0, ErrUnsupported, 16, "feature_flags", "unknown bits"},
		{"both uid widths", put(good, 16, 0x3), 0, ErrMalformed, 16, "feature_flags", "both 16-bit and 32-bit UIDs"},
		{"two time granularities", put(good, 16, 0x28), 0, ErrMalformed, 16, "feature_flags", "nanosecond time"},
		{"acl without uids", put(good, 16, 0x20000000), 0, ErrMalformed, 16, "feature_flags", "ACLs without UIDs"},
		{"nodump twice", put(good, 16, 0x8000000000100000), 0, ErrMalformed, 16, "feature_flags", "EXCLUDE_NODUMP"},
		{"min 0", put(good, 24, 0), 0, ErrMalformed, 24, "chunk_size_min", "0 is outside [1, 134217728]"},
		{"avg 0", put(good, 32, 0), 0, ErrMalformed, 32, "chunk_size_avg", "outside"},
		{"max above 128 MiB", put(good, 40, 128<<20+1), 0, ErrMalformed, 40, "chunk_size_max", "134217729 is outside"},
		{"min above avg", put(good, 24, 65), 0, ErrMalformed, 24, "chunk_size_min/avg/max", "65/64/256"},
		{"avg above max", put(good, 32, 257), 0, ErrMalformed, 24, "chunk_size_min/avg/max", "16/257/256"},
		{"table.size", put(good, 48, 184), 0, ErrMalformed, 48, "table.size", "0xb8, want 0xffffffffffffffff"},
		{"table.type", put(good, 56, TypeIndex), 0, ErrMalformed, 56, "table.type", "CA_FORMAT_TABLE"},
		{"item 1 equal offset", put(good, 104, 100), 0, ErrMalformed, 104, "item[1].offset", "end offset 100 is not above the previous end offset 100"},
		{"item 2 going back", put(good, 144, 150), 0, ErrMalformed, 144, "item[2].offset", "150 is not above the previous end offset 200"},
		{"chunk above max", put(good, 64, 257), 0, ErrMalformed, 64, "item[0].offset", "chunk [0, 257) is 257 bytes, more than chunk_size_max 256"},
		{"later chunk above max", put(put(good, 104, 400), 144, 500), 0, ErrMalformed, 104, "item[1].offset", "300 bytes"},
		{"item with offset 0", put(good, 64, 0), 0, ErrMalformed, 96, "tail.marker", "can only be the tail"},
		{"tail marker", put(good, 216, 1), 0, ErrMalformed, 216, "tail.marker", "0x0000000000000001, want 0x4b4f050e5549ecd1"},
		{"tail zero_fill2", put(good, 192, 7), 0, ErrMalformed, 192, "tail.zero_fill2", "0x7, want 0"},
		{"tail index_offset", put(good, 200, 64), 0, ErrMalformed, 200, "tail.index_offset", "64, want 48"},
		{"tail size one item short", put(good, 208, 136), 0, ErrMalformed, 208, "tail.size", "136, want 176"},
		{"tail size too big", put(good, 208, 216), 0, ErrMalformed, 208, "tail.size", "216, want 176 for a table of 3 items"},
		{"trailing byte", append(bytes.Clone(good), 0), 0, ErrMalformed, 224, "", "data follows the table's tail"},
		{"two tails", append(bytes.Clone(good), good[184:]...), 0, ErrMalformed, 224, "", "data follows"},
		{"above limit", good, 223, ErrTooLarge, 184, "", "past the 223-byte limit"},
		{"above tiny limit", good, 10, ErrTooLarge, 0, "", "past the 10-byte limit"},
	}
	for _, tc := range tests {
		for _, via := range []string{"Parse", "Parser"} {
			var err error
			if via == "Parse" {
				_, err = Parse(bytes.NewReader(tc.input), tc.max)
			} else {
				p := NewParser(tc.max, nil)
				if _, err = p.Write(tc.input); err == nil {
					err = p.Close()
				}
			}
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, tc.err) {
				t.Errorf("%s via %s: %v, want a *FormatError wrapping %v", tc.name, via, err, tc.err)
				continue
			}
			if fe.Offset != tc.off || fe.Field != tc.field || !strings.Contains(fe.Msg, tc.msg) {
				t.Errorf("%s via %s: %q, want offset %d, field %q, saying %q", tc.name, via, err, tc.off, tc.field, tc.msg)
			}
		}
	}
	// A limit exactly the file's size is enough.
	if _, err := Parse(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Errorf("limit = file size: %v", err)
	}
}

// TestReaderStreams: entries come one by one from a reader that returns
// one byte at a time; errors are sticky; Header alone reads only the head.
func TestReaderStreams(t *testing.T) {
	good := build(t, testHeader, 50, 7)
	r := NewReader(iotest.OneByteReader(bytes.NewReader(good)), 0)
	h, err := r.Header()
	if err != nil || h != testHeader || r.Offset() != 64 {
		t.Fatalf("Header: %v %v, offset %d", h, err, r.Offset())
	}
	for i := range 50 {
		e, err := r.Next()
		if err != nil || e.Start != uint64(7*i) || e.End != uint64(7*i+7) || e.ID != id(byte(i+1)) {
			t.Fatalf("entry %d: %+v %v", i, e, err)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last entry: %v", err)
	}
	if _, err := r.Next(); err != io.EOF || r.Chunks() != 50 || r.Size() != 350 || r.Offset() != int64(len(good)) {
		t.Fatalf("again: %v, %d chunks, size %d, offset %d", err, r.Chunks(), r.Size(), r.Offset())
	}

	bad := NewReader(bytes.NewReader(put(good, 0, 1)), 0)
	_, err1 := bad.Next()
	_, err2 := bad.Header()
	if err1 == nil || err2 != err1 {
		t.Fatalf("sticky error: %v then %v", err1, err2)
	}
	failing := NewReader(iotest.ErrReader(errors.New("disk on fire")), 0)
	if _, err := failing.Header(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("read error not passed on: %v", err)
	}
}

// TestParserPieces: the index pushed in pieces of every size from 1 to 97
// bytes gives the same entries as Parse.
func TestParserPieces(t *testing.T) {
	good := build(t, testHeader, 20, 33)
	want, err := Parse(bytes.NewReader(good), 0)
	if err != nil {
		t.Fatal(err)
	}
	for piece := 1; piece <= 97; piece++ {
		var got []Entry
		p := NewParser(0, func(e Entry) error { got = append(got, e); return nil })
		for rest := good; len(rest) > 0; {
			n := min(piece, len(rest))
			if k, err := p.Write(rest[:n]); err != nil || k != n {
				t.Fatalf("piece %d: Write %d, %v", piece, k, err)
			}
			rest = rest[n:]
			if h, ok := p.Header(); ok != (len(good)-len(rest) >= 64) || (ok && h != testHeader) {
				t.Fatalf("piece %d: Header %v %v after %d bytes", piece, h, ok, len(good)-len(rest))
			}
		}
		if err := p.Close(); err != nil || !p.Done() {
			t.Fatalf("piece %d: Close %v", piece, err)
		}
		if len(got) != len(want.Chunks) || got[19] != want.Chunks[19] || p.Chunks() != 20 || p.Size() != 660 {
			t.Fatalf("piece %d: %d entries", piece, len(got))
		}
	}
	stop := errors.New("enough")
	p := NewParser(0, func(e Entry) error { return stop })
	if _, err := p.Write(good); err != stop || p.Close() != stop {
		t.Fatalf("callback error not returned: %v", err)
	}
}

func TestWriterRefuses(t *testing.T) {
	if _, err := NewWriter(io.Discard, Header{Flags: FlagSHA512_256}); !errors.Is(err, ErrMalformed) {
		t.Errorf("NewWriter with zero sizes: %v", err)
	}
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, testHeader)
	if err := w.Add(id(1), 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("Add size 0: %v", err)
	}
	if err := w.Add(id(1), 257); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "item[0]: chunk size 257 is outside [1, chunk_size_max 256]") {
		t.Errorf("Add size 257: %v", err)
	}
	// Refused chunks leave no trace.
	if err := w.Add(id(1), 256); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil || w.Close() != nil {
		t.Fatal(err)
	}
	if err := w.Add(id(2), 1); err == nil {
		t.Error("Add after Close accepted")
	}
	if !bytes.Equal(buf.Bytes(), build(t, testHeader, 1, 256)) || w.Chunks() != 1 || w.Size() != 256 {
		t.Error("output after refused chunks differs")
	}

	bad := [][]Entry{
		{{Start: 1, End: 5}},
		{{Start: 0, End: 5}, {Start: 6, End: 7}},
		{{Start: 0, End: 0}},
		{{Start: 0, End: 300}},
	}
	for _, entries := range bad {
		var out bytes.Buffer
		if err := Write(&out, testHeader, entries); !errors.Is(err, ErrMalformed) || out.Len() != 0 {
			t.Errorf("Write(%v): %v, wrote %d bytes", entries, err, out.Len())
		}
	}
	if _, err := BlobHeader(Digest(9), 1, 2, 3); err == nil {
		t.Error("BlobHeader with an unknown digest")
	}
	if _, err := BlobHeader(SHA256, 4, 2, 3); err == nil {
		t.Error("BlobHeader with min > avg")
	}
	if err := Write(failWriter{}, testHeader, nil); err == nil || !strings.Contains(err.Error(), "writing index") {
		t.Errorf("write error: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("no space") }

// TestLargeIndexStreams: a 100,000-chunk index flows through Writer and
// Reader without either holding it whole.
func TestLargeIndexStreams(t *testing.T) {
	const n = 100_000
	pr, pw := io.Pipe()
	go func() {
		w, _ := NewWriter(pw, testHeader)
		for i := range n {
			var x [IDSize]byte
			binary.LittleEndian.PutUint64(x[:], uint64(i))
			w.Add(x, uint64(1+i%256))
		}
		pw.CloseWithError(w.Close())
	}()
	r := NewReader(pr, FileSize(n))
	count := 0
	for {
		e, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint64(e.ID[:]) != uint64(count) || e.Size() != uint64(1+count%256) {
			t.Fatalf("entry %d: %+v", count, e)
		}
		count++
	}
	if count != n || r.Offset() != FileSize(n) {
		t.Fatalf("%d entries, %d bytes", count, r.Offset())
	}
}

func TestFlagsAndDigest(t *testing.T) {
	for _, f := range []FeatureFlags{0, 0xb000000000000000, 0x9000000000000000, 0xa000000000000000, 0xb0000001ffeffe26, KnownFlags &^ (0x1 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x100000)} {
		if err := f.Validate(); err != nil {
			t.Errorf("%v: %v", f, err)
		}
	}
	if FeatureFlags(0xa000000000000000).Digest() != SHA512_256 || FeatureFlags(0x9000000000000000).Digest() != SHA256 {
		t.Error("Digest from flags")
	}
	if SHA256.String() != "sha256" || SHA512_256.String() != "sha512-256" || Digest(0).String() != "Digest(0)" {
		t.Error("Digest.String")
	}
	data := []byte("chunk")
	for _, d := range []Digest{SHA256, SHA512_256} {
		h := d.New()
		h.Write(data)
		if got := d.Sum(data); !bytes.Equal(h.Sum(nil), got[:]) {
			t.Errorf("%v: Sum and New disagree", d)
		}
	}
	if s := testHeader.String(); s != "flags=0x2000000000000000 digest=sha512-256 chunk sizes 16/64/256" {
		t.Errorf("Header.String = %q", s)
	}
}
