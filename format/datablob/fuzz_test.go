package datablob_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/datablob"
)

// fuzzMaxDecode caps the fuzzer's decode limit, so that a limit that is
// not respected shows up as a failure rather than as memory exhaustion.
const fuzzMaxDecode = 1 << 20

// FuzzParse: Parse never panics and fails only with a *FormatError; what
// it accepts, Encode writes back byte for byte; Decode never returns more
// than its limit, fails only with a *FormatError, and what it decodes it
// decodes the same at a larger limit and refuses one byte under. With fixCRC set, the input's CRC is corrected first, so
// that the fuzzer gets past the CRC into the payload.
func FuzzParse(f *testing.F) {
	for _, g := range []string{goldenRaw, goldenZstd, goldenEncrypted, goldenEncryptedZstd} {
		b := unhex(f, g)
		f.Add(b, false, uint32(0))
		f.Add(b[:len(b)-1], true, uint32(3))
	}
	for _, frame := range [][]byte{rleFrame(3, 0x70), rleFrame(1, 0x90), unhex(f, "28b52ffd 20 00 01 00 00")} {
		b, err := datablob.EncodeZstd(frame)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false, uint32(200<<10))
	}
	f.Add([]byte{}, false, uint32(0))
	f.Fuzz(func(t *testing.T, b []byte, fixCRC bool, limit uint32) {
		if fixCRC && len(b) >= datablob.HeaderSize {
			if k := datablob.KindOf([8]byte(b)); k != 0 && len(b) >= k.HeaderSize() {
				binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(b[k.HeaderSize():]))
			}
		}
		blob, err := datablob.Parse(b)
		if err != nil {
			checkErr(t, "Parse", err, datablob.ErrShort, datablob.ErrBadMagic, datablob.ErrCRCMismatch, datablob.ErrTooLarge)
			return
		}
		if _, err := datablob.ParseChunk(b); err != nil {
			t.Fatalf("ParseChunk refused (%v) a small blob Parse took", err)
		}
		again, err := blob.Encode()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("Encode of a parsed blob = %x, %v", again, err)
		}
		max := int(limit%fuzzMaxDecode) + 1
		plain, err := blob.Decode(max)
		if blob.Encrypted() {
			if !errors.Is(err, datablob.ErrEncrypted) {
				t.Fatalf("Decode of an encrypted blob: %v", err)
			}
			return
		}
		if err != nil {
			// ErrTooLarge may come from a declared size alone, so a
			// larger limit may still find the frame bad: no more to say.
			checkErr(t, "Decode", err, datablob.ErrTooLarge, datablob.ErrBadZstd)
			return
		}
		if len(plain) > max {
			t.Fatalf("Decode(%d) returned %d bytes", max, len(plain))
		}
		if len(plain) > 1 { // a limit of 0 means the default
			if _, err := blob.Decode(len(plain) - 1); !errors.Is(err, datablob.ErrTooLarge) {
				t.Fatalf("Decode one byte under its %d-byte output: %v", len(plain), err)
			}
		}
		if blob.Kind == datablob.Zstd {
			more, err := blob.Decode(fuzzMaxDecode)
			if err != nil || !bytes.Equal(more, plain) {
				t.Fatalf("Decode(%d) and Decode(%d) disagree: %v", max, fuzzMaxDecode, err)
			}
		}
		// The plain data, raw-encoded, comes back unchanged.
		raw, err := datablob.EncodeRaw(plain)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := datablob.Parse(raw)
		if err != nil {
			t.Fatalf("Parse(EncodeRaw(plain)): %v", err)
		}
		if back, err := rb.Decode(len(plain)); err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("raw round trip: %v", err)
		}
	})
}

func checkErr(t *testing.T, what string, err error, sentinels ...error) {
	t.Helper()
	var fe *datablob.FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("%s error %T: %v", what, err, err)
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("%s error wraps none of %v: %v", what, sentinels, err)
}
