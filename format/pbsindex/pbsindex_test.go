package pbsindex_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/chunkbridge/chunkbridge/format/pbsindex"
)

func digest(s string) pbsindex.Digest { return sha256.Sum256([]byte(s)) }

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// file is a header's used bytes, the zero padding to 4096, then entries.
func file(t testing.TB, head, entries string) []byte {
	t.Helper()
	h := unhex(t, head)
	out := append(h, make([]byte, pbsindex.HeaderSize-len(h))...)
	return append(out, unhex(t, entries)...)
}

var testUUID = pbsindex.UUID{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}

// goldenFixed: a 10 MiB + 1 byte image in 4 MiB slots (3 slots), laid out
// as reference §6 describes .fidx.
func goldenFixed(t testing.TB) (*pbsindex.Fixed, []byte) {
	f := &pbsindex.Fixed{UUID: testUUID, CTime: 1551863212, Size: 10<<20 + 1, ChunkSize: 4 << 20,
		Digests: []pbsindex.Digest{digest("a"), digest("b"), digest("c")}}
	b := file(t, `
		50 52 4f 58 4d 4f 58 2d 46 49 44 58   01 00 00 00
		00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff
		ac 8d 7f 5c 00 00 00 00   01 00 a0 00 00 00 00 00
		00 00 40 00 00 00 00 00`, `
		ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb
		3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d
		2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6`)
	return f, b
}

// goldenDynamic: "hello world" cut after 5 bytes, as .didx end offsets.
func goldenDynamic(t testing.TB) (*pbsindex.Dynamic, []byte) {
	d := &pbsindex.Dynamic{UUID: testUUID, CTime: 1551863212, Entries: []pbsindex.DynamicEntry{
		{End: 5, Digest: digest("hello")}, {End: 11, Digest: digest(" world")}}}
	b := file(t, `
		50 52 4f 58 4d 4f 58 2d 44 49 44 58   01 00 00 00
		00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff
		ac 8d 7f 5c 00 00 00 00`, `
		05 00 00 00 00 00 00 00 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
		0b 00 00 00 00 00 00 00 `+hex.EncodeToString(func() []byte { d := digest(" world"); return d[:] }()))
	return d, b
}

func TestGoldenFixed(t *testing.T) {
	f, want := goldenFixed(t)
	if len(want) != 4096+3*32 {
		t.Fatalf("golden is %d bytes", len(want))
	}
	var buf bytes.Buffer
	if err := pbsindex.WriteFixed(&buf, f); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteFixed differs from the golden file:\n%x", firstBytes(buf.Bytes()))
	}
	got, err := pbsindex.ParseFixed(want)
	if err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("ParseFixed = %+v, %v", got, err)
	}
	got, err = pbsindex.ReadFixed(iotest.HalfReader(bytes.NewReader(want)), 0)
	if err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("ReadFixed = %+v, %v", got, err)
	}
}

func TestGoldenDynamic(t *testing.T) {
	d, want := goldenDynamic(t)
	var buf bytes.Buffer
	if err := pbsindex.WriteDynamic(&buf, d); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("WriteDynamic differs from the golden file:\n%x", firstBytes(buf.Bytes()))
	}
	got, err := pbsindex.ParseDynamic(want)
	if err != nil || !reflect.DeepEqual(got, d) {
		t.Fatalf("ParseDynamic = %+v, %v", got, err)
	}
	got, err = pbsindex.ReadDynamic(iotest.OneByteReader(bytes.NewReader(want)), 0)
	if err != nil || !reflect.DeepEqual(got, d) {
		t.Fatalf("ReadDynamic = %+v, %v", got, err)
	}
	if d.Size() != 11 {
		t.Fatalf("Size = %d", d.Size())
	}
}

func firstBytes(b []byte) []byte { return b[:min(len(b), 64)] }

func TestEmptyIndexes(t *testing.T) {
	var buf bytes.Buffer
	f := &pbsindex.Fixed{ChunkSize: 4096, Digests: []pbsindex.Digest{}}
	if err := pbsindex.WriteFixed(&buf, f); err != nil || buf.Len() != pbsindex.HeaderSize {
		t.Fatalf("empty fixed: %v, %d bytes", err, buf.Len())
	}
	if got, err := pbsindex.ParseFixed(buf.Bytes()); err != nil || len(got.Digests) != 0 {
		t.Fatalf("ParseFixed(empty) = %+v, %v", got, err)
	}
	buf.Reset()
	d := &pbsindex.Dynamic{Entries: []pbsindex.DynamicEntry{}}
	if err := pbsindex.WriteDynamic(&buf, d); err != nil || buf.Len() != pbsindex.HeaderSize {
		t.Fatalf("empty dynamic: %v, %d bytes", err, buf.Len())
	}
	if got, err := pbsindex.ReadDynamic(&buf, 0); err != nil || len(got.Entries) != 0 || got.Size() != 0 {
		t.Fatalf("ReadDynamic(empty) = %+v, %v", got, err)
	}
}

// TestLargeRoundTrip crosses the writers' and readers' batch sizes.
func TestLargeRoundTrip(t *testing.T) {
	f := &pbsindex.Fixed{UUID: pbsindex.NewUUID(), CTime: 1, ChunkSize: 4096, Size: 10000*4096 - 5}
	d := &pbsindex.Dynamic{UUID: pbsindex.NewUUID(), CTime: 2}
	var end uint64
	for i := range 10000 {
		f.Digests = append(f.Digests, digest(string(rune(i))))
		end += uint64(1 + i%777)
		d.Entries = append(d.Entries, pbsindex.DynamicEntry{End: end, Digest: digest(string(rune(i)))})
	}
	var fb, db bytes.Buffer
	if err := pbsindex.WriteFixed(&fb, f); err != nil {
		t.Fatal(err)
	}
	if err := pbsindex.WriteDynamic(&db, d); err != nil {
		t.Fatal(err)
	}
	if got, err := pbsindex.ReadFixed(bytes.NewReader(fb.Bytes()), 0); err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("ReadFixed: %v", err)
	}
	if got, err := pbsindex.ParseFixed(fb.Bytes()); err != nil || !reflect.DeepEqual(got, f) {
		t.Fatalf("ParseFixed: %v", err)
	}
	if got, err := pbsindex.ReadDynamic(bytes.NewReader(db.Bytes()), 0); err != nil || !reflect.DeepEqual(got, d) {
		t.Fatalf("ReadDynamic: %v", err)
	}
	if got, err := pbsindex.ParseDynamic(db.Bytes()); err != nil || !reflect.DeepEqual(got, d) {
		t.Fatalf("ParseDynamic: %v", err)
	}
}

func TestNewUUID(t *testing.T) {
	a, b := pbsindex.NewUUID(), pbsindex.NewUUID()
	if a == b || a[6]>>4 != 4 || a[8]>>6 != 2 {
		t.Fatalf("NewUUID: %x %x", a, b)
	}
}

func TestFixedSlots(t *testing.T) {
	for _, c := range []struct{ size, chunk, want uint64 }{
		{0, 1, 0}, {1, 1, 1}, {4096, 4096, 1}, {4097, 4096, 2}, {^uint64(0), 1, ^uint64(0)}, {^uint64(0), 2, 1 << 63},
	} {
		if got, err := pbsindex.FixedSlots(c.size, c.chunk); err != nil || got != c.want {
			t.Errorf("FixedSlots(%d, %d) = %d, %v; want %d", c.size, c.chunk, got, err, c.want)
		}
	}
	if _, err := pbsindex.FixedSlots(1, 0); err == nil {
		t.Error("FixedSlots with chunk size 0 succeeded")
	}
}

// mutate returns a copy of b with bytes at off replaced.
func mutate(b []byte, off int, v ...byte) []byte {
	c := append([]byte{}, b...)
	copy(c[off:], v)
	return c
}

type rejection struct {
	name   string
	data   []byte
	field  string
	offset int64
	reason string
}

func checkRejections(t *testing.T, cases []rejection, parse func([]byte) error, read func(io.Reader) error) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for how, err := range map[string]error{"parse": parse(c.data), "read": read(bytes.NewReader(c.data))} {
				var fe *pbsindex.FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("%s: got %v (%T), want *FormatError", how, err, err)
				}
				if fe.Field != c.field || fe.Offset != c.offset || !strings.Contains(err.Error(), c.reason) {
					t.Errorf("%s: %q (field %q offset %d); want field %q offset %d, reason containing %q",
						how, err, fe.Field, fe.Offset, c.field, c.offset, c.reason)
				}
			}
		})
	}
}

func TestFixedRejections(t *testing.T) {
	_, good := goldenFixed(t)
	_, dyn := goldenDynamic(t)
	checkRejections(t, []rejection{
		{"empty", nil, "header", 0, "file is 0 bytes, shorter than the 4096-byte header"},
		{"short header", good[:4095], "header", 0, "file is 4095 bytes"},
		{"bad magic", mutate(good, 0, 'X'), "magic", 0, `got "XROXMOX-FIDX", want "PROXMOX-FIDX"`},
		{"dynamic index", dyn, "magic", 0, "(this is the other index kind)"},
		{"version 2", mutate(good, 12, 2), "version", 12, "2, want 1"},
		{"reserved byte", mutate(good, 4000, 0x7f), "reserved", 4000, "byte 0x7f, want 0"},
		{"chunk size 0", mutate(good, 48, 0, 0, 0, 0, 0, 0, 0, 0), "chunk_size", 48, "is 0"},
		{"digest missing", good[:len(good)-32], "size", 40, "size 10485761 in 4194304-byte slots needs 3 digests"},
		{"partial digest", good[:len(good)-1], "size", 40, "needs 3 digests"},
		{"extra digest", append(append([]byte{}, good...), make([]byte, 32)...), "size", 40, "needs 3 digests"},
		{"trailing byte", append(append([]byte{}, good...), 0), "size", 40, "needs 3 digests"},
		{"size too large", mutate(good, 40, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), "size", 40, "needs 4398046511104 digests"},
	}, func(b []byte) error { _, err := pbsindex.ParseFixed(b); return err },
		func(r io.Reader) error { _, err := pbsindex.ReadFixed(r, 0); return err })
}

func TestDynamicRejections(t *testing.T) {
	_, good := goldenDynamic(t)
	_, fixed := goldenFixed(t)
	checkRejections(t, []rejection{
		{"short header", good[:100], "header", 0, "file is 100 bytes"},
		{"fixed index", fixed, "magic", 0, "(this is the other index kind)"},
		{"version 0", mutate(good, 12, 0), "version", 12, "0, want 1"},
		{"reserved byte", mutate(good, 40, 1), "reserved", 40, "byte 0x01"},
		{"partial entry", good[:len(good)-1], "entries", 4096 + 40, "39 bytes after entry 1, not a whole 40-byte entry"},
		{"zero-length first chunk", mutate(good, 4096, 0), "entry 0 end offset", 4096, "0 does not exceed the previous end 0"},
		{"decreasing", mutate(good, 4136, 4), "entry 1 end offset", 4136, "4 does not exceed the previous end 5"},
		{"repeated", mutate(good, 4136, 5), "entry 1 end offset", 4136, "5 does not exceed the previous end 5"},
	}, func(b []byte) error { _, err := pbsindex.ParseDynamic(b); return err },
		func(r io.Reader) error { _, err := pbsindex.ReadDynamic(r, 0); return err })
}

func TestWriteRefuses(t *testing.T) {
	var buf bytes.Buffer
	for _, f := range []*pbsindex.Fixed{
		{ChunkSize: 0},
		{Size: 10, ChunkSize: 4, Digests: make([]pbsindex.Digest, 2)},
		{Size: 10, ChunkSize: 4, Digests: make([]pbsindex.Digest, 4)},
	} {
		var fe *pbsindex.FormatError
		if err := pbsindex.WriteFixed(&buf, f); !errors.As(err, &fe) {
			t.Errorf("WriteFixed(%+v) = %v", f, err)
		}
	}
	for _, es := range [][]pbsindex.DynamicEntry{{{End: 0}}, {{End: 5}, {End: 5}}, {{End: 5}, {End: 3}}} {
		var fe *pbsindex.FormatError
		if err := pbsindex.WriteDynamic(&buf, &pbsindex.Dynamic{Entries: es}); !errors.As(err, &fe) {
			t.Errorf("WriteDynamic(%v) = %v", es, err)
		}
	}
	if buf.Len() != 0 {
		t.Fatalf("refused indexes wrote %d bytes", buf.Len())
	}
}

func TestLimits(t *testing.T) {
	_, fb := goldenFixed(t)
	if _, err := pbsindex.ReadFixed(bytes.NewReader(fb), 2); !errors.Is(err, pbsindex.ErrTooManyEntries) {
		t.Fatalf("ReadFixed over the limit: %v", err)
	}
	if _, err := pbsindex.ReadFixed(bytes.NewReader(fb), 3); err != nil {
		t.Fatalf("ReadFixed at the limit: %v", err)
	}
	// A header claiming 2^64-1 one-byte slots is refused before any
	// allocation, whatever follows.
	huge := mutate(fb, 40, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	huge = mutate(huge, 48, 1, 0, 0, 0, 0, 0, 0, 0)
	if _, err := pbsindex.ReadFixed(bytes.NewReader(huge), 0); !errors.Is(err, pbsindex.ErrTooManyEntries) {
		t.Fatalf("ReadFixed of a huge claim: %v", err)
	}
	_, db := goldenDynamic(t)
	if _, err := pbsindex.ReadDynamic(bytes.NewReader(db), 1); !errors.Is(err, pbsindex.ErrTooManyEntries) {
		t.Fatalf("ReadDynamic over the limit: %v", err)
	}
	if _, err := pbsindex.ReadDynamic(bytes.NewReader(db), 2); err != nil {
		t.Fatalf("ReadDynamic at the limit: %v", err)
	}
}

func TestIOErrors(t *testing.T) {
	boom := errors.New("connection reset")
	_, fb := goldenFixed(t)
	_, db := goldenDynamic(t)
	for name, err := range map[string]error{
		"fixed header": func() error {
			_, err := pbsindex.ReadFixed(io.MultiReader(bytes.NewReader(fb[:10]), iotest.ErrReader(boom)), 0)
			return err
		}(),
		"fixed digests": func() error {
			_, err := pbsindex.ReadFixed(io.MultiReader(bytes.NewReader(fb[:4100]), iotest.ErrReader(boom)), 0)
			return err
		}(),
		"fixed trailer": func() error {
			_, err := pbsindex.ReadFixed(io.MultiReader(bytes.NewReader(fb), iotest.ErrReader(boom)), 0)
			return err
		}(),
		"dynamic entries": func() error {
			_, err := pbsindex.ReadDynamic(io.MultiReader(bytes.NewReader(db[:4100]), iotest.ErrReader(boom)), 0)
			return err
		}(),
	} {
		if !errors.Is(err, boom) || !strings.Contains(err.Error(), "pbsindex: reading") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := pbsindex.WriteFixed(failWriter{boom}, &pbsindex.Fixed{ChunkSize: 1}); !errors.Is(err, boom) {
		t.Errorf("WriteFixed to a failing writer: %v", err)
	}
	if err := pbsindex.WriteDynamic(failWriter{boom}, &pbsindex.Dynamic{}); !errors.Is(err, boom) {
		t.Errorf("WriteDynamic to a failing writer: %v", err)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }
