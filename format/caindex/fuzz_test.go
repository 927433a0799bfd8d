package caindex

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse feeds arbitrary bytes to Parse and to a Parser. Neither may
// panic; they must agree; errors must be *FormatErrors; and whatever
// parses must re-encode to exactly the input.
func FuzzParse(f *testing.F) {
	f.Add(build(f, testHeader, 0, 1))
	f.Add(build(f, testHeader, 3, 100))
	f.Add(build(f, Header{Flags: 0xb0000001ffeffe26, ChunkSizeMin: 1, ChunkSizeAvg: 1, ChunkSizeMax: 1}, 2, 1))
	good := build(f, testHeader, 2, 256)
	f.Add(good[:100])
	f.Add(put(good, 64, 0))
	f.Add(append(bytes.Clone(good), 0))
	f.Add(unhex(f, refHead))

	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 1 << 16
		x, err := Parse(bytes.NewReader(in), max)

		var n int
		p := NewParser(max, func(e Entry) error {
			if x != nil && (n >= len(x.Chunks) || x.Chunks[n] != e) {
				t.Fatalf("Parser entry %d %+v differs from Parse", n, e)
			}
			n++
			return nil
		})
		half := len(in) / 2
		_, perr := p.Write(in[:half])
		if perr == nil {
			_, perr = p.Write(in[half:])
		}
		if perr == nil {
			perr = p.Close()
		}

		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error is not a *FormatError: %v", err)
			}
			if perr == nil || perr.Error() != err.Error() {
				t.Fatalf("Parse says %v, Parser says %v", err, perr)
			}
			return
		}
		if perr != nil || n != len(x.Chunks) {
			t.Fatalf("Parse accepted %d chunks, Parser %d and %v", len(x.Chunks), n, perr)
		}
		var buf bytes.Buffer
		if err := Write(&buf, x.Header, x.Chunks); err != nil {
			t.Fatalf("Write of a parsed index: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), in) {
			t.Fatalf("re-encoded index differs from the input")
		}
	})
}
