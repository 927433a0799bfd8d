package chunk

import (
	"bytes"
	"compress/gzip"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// FuzzDecode feeds arbitrary payloads to every encoding's decoder: it must
// never panic, never return more than MaxSize bytes, and fail only with
// ErrInvalid. Valid frames decode to what was encoded.
func FuzzDecode(f *testing.F) {
	plain := []byte("chunkbridge fuzz seed: some text to compress, some text to compress")
	zenc, _ := zstd.NewWriter(nil)
	f.Add(byte(chunkbridgev1.Encoding_ENCODING_ZSTD), zenc.EncodeAll(plain, nil))
	var xb, gb bytes.Buffer
	xw, _ := xz.NewWriter(&xb)
	xw.Write(plain)
	xw.Close()
	f.Add(byte(chunkbridgev1.Encoding_ENCODING_XZ), xb.Bytes())
	gw := gzip.NewWriter(&gb)
	gw.Write(plain)
	gw.Close()
	f.Add(byte(chunkbridgev1.Encoding_ENCODING_GZIP), gb.Bytes())
	f.Add(byte(chunkbridgev1.Encoding_ENCODING_RAW), plain)

	c, err := newCodec()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, enc byte, payload []byte) {
		out, err := c.decode(chunkbridgev1.Encoding(enc%6), payload)
		if err != nil {
			if !errors.Is(err, apierr.ErrInvalid) {
				t.Fatalf("error outside ErrInvalid: %v", err)
			}
			return
		}
		if len(out) > MaxSize {
			t.Fatalf("decoded %d bytes, more than MaxSize", len(out))
		}
		if chunkbridgev1.Encoding(enc%6) == chunkbridgev1.Encoding_ENCODING_ZSTD {
			// Re-encoding what decoded must round-trip.
			again, err := c.decode(chunkbridgev1.Encoding_ENCODING_ZSTD, c.compress(out))
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("round trip of %d decoded bytes failed: %v", len(out), err)
			}
		}
	})
}

// FuzzParseID: only 64 hex characters parse, and they print back the same.
func FuzzParseID(f *testing.F) {
	f.Add("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	f.Add("ZZ")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if len(s) != 64 || !bytes.EqualFold([]byte(id.String()), []byte(s)) {
			t.Fatalf("ParseID(%q) = %s", s, id)
		}
	})
}
