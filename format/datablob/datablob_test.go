package datablob_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/chunkbridge/chunkbridge/format/datablob"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The golden blobs are built by hand from reference §2 and
// docs/formats.md §10: the magic bytes from the reference's table, the CRC
// computed independently with Python's zlib.crc32 over the payload bytes
// shown, and the zstd frames written byte by byte from RFC 8878 and checked
// with the reference decoder (`printf … | zstd -dc`).

// goldenRaw: "hello", uncompressed. crc32("hello") = 0x3610a686.
const goldenRaw = `42 ab 38 07 be 83 70 a1   86 a6 10 36   68 65 6c 6c 6f`

// goldenZstd: "hello" as a 14-byte zstd frame: magic; descriptor 0x20
// (single segment, 1-byte content size, no checksum); content size 5; one
// last raw block of 5 bytes (header (5<<3)|1 = 0x29); the data.
// crc32 of the frame = 0xae896499.
const goldenZstd = `31 b9 58 42 6f b6 a3 7f   99 64 89 ae
	28 b5 2f fd 20 05 29 00 00 68 65 6c 6c 6f`

// goldenEncrypted: IV 00..0f, tag 10..1f, ciphertext de ad be ef. The CRC
// covers the ciphertext only: crc32(de ad be ef) = 0x7c9ca35a.
const goldenEncrypted = `7b 67 85 be 22 2d 4c f0   5a a3 9c 7c
	00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
	10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f
	de ad be ef`

// goldenEncryptedZstd is goldenEncrypted with the encrypted+zstd magic.
const goldenEncryptedZstd = `e6 59 1b bf 0b bf d8 0b   5a a3 9c 7c
	00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f
	10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f
	de ad be ef`

var (
	testIV  = [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	testTag = [16]byte{16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31}
)

func TestGolden(t *testing.T) {
	for _, c := range []struct {
		name    string
		golden  string
		kind    datablob.Kind
		payload string
		crc     uint32
		plain   string // "" for encrypted kinds
	}{
		{"uncompressed", goldenRaw, datablob.Uncompressed, "68656c6c6f", 0x3610a686, "hello"},
		{"zstd", goldenZstd, datablob.Zstd, "28b52ffd2005290000" + "68656c6c6f", 0xae896499, "hello"},
		{"encrypted", goldenEncrypted, datablob.Encrypted, "deadbeef", 0x7c9ca35a, ""},
		{"encrypted+zstd", goldenEncryptedZstd, datablob.EncryptedZstd, "deadbeef", 0x7c9ca35a, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := unhex(t, c.golden)
			blob, err := datablob.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if blob.Kind != c.kind || blob.Kind.String() != c.name || hex.EncodeToString(blob.Payload) != c.payload || blob.CRC() != c.crc {
				t.Fatalf("Parse = %s payload %x crc %#x", blob.Kind, blob.Payload, blob.CRC())
			}
			if &blob.Payload[0] != &b[len(b)-len(blob.Payload)] {
				t.Error("Payload is a copy, not a slice of the input")
			}
			if blob.Encrypted() != (c.plain == "") || blob.Kind.Compressed() != strings.Contains(c.name, "zstd") {
				t.Errorf("Encrypted = %v, Compressed = %v", blob.Encrypted(), blob.Kind.Compressed())
			}
			if blob.Encrypted() && (blob.IV != testIV || blob.Tag != testTag) {
				t.Errorf("IV %x tag %x", blob.IV, blob.Tag)
			}
			if !blob.Encrypted() && (blob.IV != [16]byte{} || blob.Tag != [16]byte{}) {
				t.Errorf("unencrypted blob has IV %x tag %x", blob.IV, blob.Tag)
			}
			if blob.EncodedSize() != len(b) {
				t.Errorf("EncodedSize = %d, want %d", blob.EncodedSize(), len(b))
			}
			again, err := blob.Encode()
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("Encode = %x, %v; want the golden bytes", again, err)
			}
			plain, err := blob.Decode(0)
			if c.plain == "" {
				if !errors.Is(err, datablob.ErrEncrypted) {
					t.Fatalf("Decode of an encrypted blob: %v", err)
				}
				return
			}
			if err != nil || string(plain) != c.plain {
				t.Fatalf("Decode = %q, %v", plain, err)
			}
		})
	}
}

func TestEncodeHelpers(t *testing.T) {
	raw, err := datablob.EncodeRaw([]byte("hello"))
	if err != nil || !bytes.Equal(raw, unhex(t, goldenRaw)) {
		t.Fatalf("EncodeRaw = %x, %v", raw, err)
	}
	z, err := datablob.EncodeZstd(unhex(t, "28b52ffd2005290000 68656c6c6f"))
	if err != nil || !bytes.Equal(z, unhex(t, goldenZstd)) {
		t.Fatalf("EncodeZstd = %x, %v", z, err)
	}
	// Encrypted kinds through Blob: the CRC skips the IV and tag.
	e, err := datablob.Blob{Kind: datablob.Encrypted, IV: testIV, Tag: testTag, Payload: unhex(t, "deadbeef")}.Encode()
	if err != nil || !bytes.Equal(e, unhex(t, goldenEncrypted)) {
		t.Fatalf("Encode(encrypted) = %x, %v", e, err)
	}
	// Empty data is a valid (12-byte) blob.
	empty, err := datablob.EncodeRaw(nil)
	if err != nil || len(empty) != datablob.HeaderSize {
		t.Fatalf("EncodeRaw(nil) = %x, %v", empty, err)
	}
	if b, err := datablob.Parse(empty); err != nil || len(b.Payload) != 0 {
		t.Fatalf("Parse(empty blob) = %+v, %v", b, err)
	}
	// Append appends.
	out, err := datablob.Blob{Kind: datablob.Uncompressed, Payload: []byte("hello")}.Append([]byte("xy"))
	if err != nil || string(out[:2]) != "xy" || !bytes.Equal(out[2:], unhex(t, goldenRaw)) {
		t.Fatalf("Append = %x, %v", out, err)
	}
}

// TestZstdServedBack: a frame as chunkbridge stores it (klauspost's
// encoder, with checksum) is wrapped without recompression and decodes to
// the data.
func TestZstdServedBack(t *testing.T) {
	data := bytes.Repeat([]byte("chunkbridge "), 10000)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	frame := enc.EncodeAll(data, nil)
	b, err := datablob.EncodeZstd(frame)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[datablob.HeaderSize:], frame) {
		t.Fatal("EncodeZstd changed the frame")
	}
	blob, err := datablob.ParseChunk(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := blob.Decode(datablob.MaxChunkSize)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Decode: %v (%d bytes)", err, len(got))
	}
	// Exactly at the limit is allowed; one byte under is not.
	if _, err := blob.Decode(len(data)); err != nil {
		t.Fatalf("Decode at the limit: %v", err)
	}
	if _, err := blob.Decode(len(data) - 1); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("Decode one byte over the limit: %v", err)
	}
}

// mutate returns a copy of b with bytes at off replaced.
func mutate(b []byte, off int, v ...byte) []byte {
	c := append([]byte{}, b...)
	copy(c[off:], v)
	return c
}

func TestParseRejections(t *testing.T) {
	raw := unhex(t, goldenRaw)
	enc := unhex(t, goldenEncrypted)
	for _, c := range []struct {
		name     string
		data     []byte
		sentinel error
		field    string
		offset   int
		reason   string
	}{
		{"empty", nil, datablob.ErrShort, "header", 0, "blob is 0 bytes, shorter than the 12-byte header"},
		{"11 bytes", raw[:11], datablob.ErrShort, "header", 0, "blob is 11 bytes"},
		{"bad magic", mutate(raw, 0, 0x43), datablob.ErrBadMagic, "magic", 0, "43 ab 38 07 be 83 70 a1 is not a DataBlob magic"},
		{"index magic", mutate(raw, 0, 47, 127, 65, 237, 145, 253, 15, 205), datablob.ErrBadMagic, "magic", 0, "not a DataBlob magic"},
		{"encrypted without tag", enc[:43], datablob.ErrShort, "header", 0, "encrypted blob is 43 bytes, shorter than its 44-byte header"},
		{"encrypted header only", enc[:12], datablob.ErrShort, "header", 0, "encrypted blob is 12 bytes"},
		{"crc", mutate(raw, 8, 0x87), datablob.ErrCRCMismatch, "crc", 8, "header says 0x3610a687"},
		{"payload flipped", mutate(raw, 12, 'H'), datablob.ErrCRCMismatch, "crc", 8, "the 5-byte payload sums to"},
		{"payload cut", raw[:len(raw)-1], datablob.ErrCRCMismatch, "crc", 8, "4-byte payload"},
		// The CRC does not cover the IV or tag, so a flipped IV is not
		// the envelope's business (AES-GCM will catch it at the client),
		// but a flipped ciphertext byte is.
		{"ciphertext flipped", mutate(enc, 44, 0xdf), datablob.ErrCRCMismatch, "crc", 8, "4-byte payload"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := datablob.Parse(c.data)
			var fe *datablob.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.sentinel) {
				t.Fatalf("Parse = %v (%T); want a *FormatError wrapping %v", err, err, c.sentinel)
			}
			if fe.Field != c.field || fe.Offset != c.offset || !strings.Contains(err.Error(), c.reason) {
				t.Errorf("%q (field %q offset %d); want field %q offset %d, reason containing %q", err, fe.Field, fe.Offset, c.field, c.offset, c.reason)
			}
		})
	}
	if _, err := datablob.Parse(mutate(enc, 12, 0xff)); err != nil {
		t.Errorf("a changed IV is outside the CRC, yet Parse says %v", err)
	}
}

func TestLimits(t *testing.T) {
	// A blob one byte over the chunk limit: ParseChunk refuses it before
	// summing it, Parse takes it.
	big := make([]byte, datablob.MaxEncodedChunkSize+1-datablob.HeaderSize)
	b, err := datablob.EncodeRaw(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := datablob.ParseChunk(b); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("ParseChunk over the limit: %v", err)
	}
	if _, err := datablob.ParseChunk(b[:len(b)-1]); !errors.Is(err, datablob.ErrCRCMismatch) {
		t.Fatalf("ParseChunk at the limit got past the size check? %v", err)
	}
	blob, err := datablob.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blob.Decode(datablob.MaxChunkSize); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("Decode of %d raw bytes with the chunk limit: %v", len(blob.Payload), err)
	}
	if d, err := blob.Decode(0); err != nil || len(d) != len(big) {
		t.Fatalf("Decode(0) = %d bytes, %v", len(d), err)
	}

	// The blob limit, without allocating 128 MiB for the test: the size
	// check comes before the CRC, so a buffer's length is all it needs.
	huge := make([]byte, datablob.MaxEncodedSize+1)
	copy(huge, unhex(t, goldenRaw)[:12])
	if _, err := datablob.Parse(huge); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("Parse over MaxEncodedSize: %v", err)
	}
	if _, err := datablob.EncodeRaw(huge[:datablob.MaxBlobSize+1]); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("EncodeRaw over MaxBlobSize: %v", err)
	}
	if _, err := (datablob.Blob{Kind: datablob.Encrypted, Payload: huge[:datablob.MaxBlobSize+1]}).Encode(); !errors.Is(err, datablob.ErrTooLarge) {
		t.Fatalf("Encode over MaxEncodedSize: %v", err)
	}
}

func TestEncodeRefuses(t *testing.T) {
	for _, k := range []datablob.Kind{0, 5, 255} {
		if _, err := (datablob.Blob{Kind: k}).Encode(); !errors.Is(err, datablob.ErrBadMagic) {
			t.Errorf("Encode of kind %d: %v", k, err)
		}
		if _, err := (datablob.Blob{Kind: k}).Decode(0); !errors.Is(err, datablob.ErrBadMagic) {
			t.Errorf("Decode of kind %d: %v", k, err)
		}
		if k.Magic() != [8]byte{} || datablob.KindOf(k.Magic()) != 0 {
			t.Errorf("kind %d has a magic", k)
		}
	}
	for _, f := range [][]byte{nil, {0x28, 0xb5, 0x2f}, []byte("hello"), unhex(t, goldenRaw)} {
		if _, err := datablob.EncodeZstd(f); !errors.Is(err, datablob.ErrBadZstd) {
			t.Errorf("EncodeZstd(%x): %v", f, err)
		}
	}
}

func TestKinds(t *testing.T) {
	for k := datablob.Uncompressed; k <= datablob.EncryptedZstd; k++ {
		if datablob.KindOf(k.Magic()) != k {
			t.Errorf("KindOf(%s.Magic()) = %s", k, datablob.KindOf(k.Magic()))
		}
		want := datablob.HeaderSize
		if k.Encrypted() {
			want = datablob.EncryptedHeaderSize
		}
		if k.HeaderSize() != want {
			t.Errorf("%s.HeaderSize() = %d", k, k.HeaderSize())
		}
	}
	if s := datablob.Kind(9).String(); s != "Kind(9)" {
		t.Errorf("String of an invalid kind: %q", s)
	}
}

// zstdBlob wraps a hand-made frame as a zstd blob.
func zstdBlob(t testing.TB, frame []byte) datablob.Blob {
	t.Helper()
	b, err := datablob.EncodeZstd(frame)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := datablob.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// rleFrame is a zstd frame without a content size whose n last-flagged-at-
// the-end RLE blocks of 128 KiB each decode to n × 128 KiB of 'A': a
// compression bomb of 4 bytes per 128 KiB. window is the frame's window
// descriptor byte (0x70 = 16 MiB, 0x78 = 32 MiB).
func rleFrame(n int, window byte) []byte {
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, window}
	for i := range n {
		h := uint32(128<<10)<<3 | 1<<1 // size, type RLE
		if i == n-1 {
			h |= 1 // last block
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16), 'A')
	}
	return f
}

func TestDecodeZstd(t *testing.T) {
	for _, c := range []struct {
		name     string
		frame    []byte
		max      int
		sentinel error // nil: decodes to want bytes
		want     int
		reason   string
	}{
		{"rle 128 KiB", rleFrame(1, 0x70), 0, nil, 128 << 10, ""},
		{"rle at the limit", rleFrame(2, 0x70), 256 << 10, nil, 256 << 10, ""},
		{"rle over a small limit", rleFrame(2, 0x70), 256<<10 - 1, datablob.ErrTooLarge, 0, "more than the 262143-byte limit"},
		{"bomb over the chunk limit", rleFrame(129, 0x70), datablob.MaxChunkSize, datablob.ErrTooLarge, 0, "more than the 16777216-byte limit"},
		{"declared size over the limit", unhex(t, "28b52ffd2005290000 68656c6c6f"), 4, datablob.ErrTooLarge, 0, "declares 5 bytes"},
		{"window larger than the limit", rleFrame(1, 0x78), 1 << 20, nil, 128 << 10, ""},
		{"window over 128 MiB", rleFrame(1, 0x90), 0, datablob.ErrTooLarge, 0, "window over 134217728 bytes"},
		{"declared size wrong", unhex(t, "28b52ffd 20 ff 29 00 00 68 65 6c 6c 6f"), 0, datablob.ErrBadZstd, 0, ""},
		{"declared size beyond the payload", unhex(t, "28b52ffd a0 00001000 29 00 00 68 65 6c 6c 6f"), 0, datablob.ErrBadZstd, 0, "declares 1048576 bytes of data, more than 17 bytes of zstd can hold"},
		{"empty frame", unhex(t, "28b52ffd 20 00 01 00 00"), 0, nil, 0, ""},
		{"two frames", unhex(t, "28b52ffd2005290000 68656c6c6f 28b52ffd2005290000 68656c6c6f"), 0, nil, 10, ""},
		{"two frames over the limit", unhex(t, "28b52ffd2005290000 68656c6c6f 28b52ffd2005290000 68656c6c6f"), 9, datablob.ErrTooLarge, 0, "more than the 9-byte limit"},
		{"empty payload", nil, 0, datablob.ErrBadZstd, 0, "empty"},
		{"not zstd", []byte("hello, world"), 0, datablob.ErrBadZstd, 0, "zstd frame header"},
		{"truncated block", unhex(t, "28b52ffd2005290000 68656c6c"), 0, datablob.ErrBadZstd, 0, ""},
		{"content size lies", unhex(t, "28b52ffd2006290000 68656c6c6f"), 0, datablob.ErrBadZstd, 0, ""},
		{"trailing garbage", append(unhex(t, "28b52ffd2005290000 68656c6c6f"), 1, 2, 3, 4), 0, datablob.ErrBadZstd, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			var blob datablob.Blob
			if c.frame == nil {
				blob = datablob.Blob{Kind: datablob.Zstd}
			} else if bytes.HasPrefix(c.frame, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
				blob = zstdBlob(t, c.frame)
			} else {
				blob = datablob.Blob{Kind: datablob.Zstd, Payload: c.frame}
			}
			got, err := blob.Decode(c.max)
			if c.sentinel == nil {
				if err != nil || len(got) != c.want {
					t.Fatalf("Decode = %d bytes, %v; want %d", len(got), err, c.want)
				}
				return
			}
			var fe *datablob.FormatError
			if !errors.As(err, &fe) || !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.reason) {
				t.Fatalf("Decode = %v; want a *FormatError wrapping %v, containing %q", err, c.sentinel, c.reason)
			}
			if got != nil {
				t.Fatalf("Decode returned %d bytes with its error", len(got))
			}
		})
	}
}

// TestDecodeConcurrent: the shared decoder serves concurrent callers (run
// with -race).
func TestDecodeConcurrent(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	for i := range 8 {
		data := bytes.Repeat([]byte{byte(i)}, 100000+i)
		blob := zstdBlob(t, enc.EncodeAll(data, nil))
		go func() {
			for range 20 {
				got, err := blob.Decode(datablob.MaxChunkSize)
				if err == nil && !bytes.Equal(got, data) {
					err = errors.New("wrong data")
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// TestDecodeMemoryBounded: a 4 KiB bomb that would decode to 128 MiB is
// refused having allocated a small multiple of the limit, whatever the
// limit, not the bomb's size.
func TestDecodeMemoryBounded(t *testing.T) {
	blob := zstdBlob(t, rleFrame(1024, 0x70)) // 128 MiB of 'A'
	for _, limit := range []int{1 << 20, datablob.MaxChunkSize} {
		if _, err := blob.Decode(limit); !errors.Is(err, datablob.ErrTooLarge) {
			t.Fatalf("Decode of a bomb: %v", err) // and warms the decoder up
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range 3 {
			if _, err := blob.Decode(limit); !errors.Is(err, datablob.ErrTooLarge) {
				t.Fatalf("Decode of a bomb: %v", err)
			}
		}
		runtime.ReadMemStats(&after)
		perCall := (after.TotalAlloc - before.TotalAlloc) / 3
		// The retries sum to 4/3 of the limit, and each overflows by one
		// block, which Go's append grows by a quarter: about 3 × in all.
		if perCall > 4*uint64(limit) {
			t.Fatalf("refusing the bomb at a %d MiB limit allocated %.1f MiB per call", limit>>20, float64(perCall)/(1<<20))
		}
		t.Logf("refusing a 128 MiB bomb at a %d MiB limit allocated %.1f MiB per call", limit>>20, float64(perCall)/(1<<20))
	}
}
