package caproto

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReadMessage feeds arbitrary streams to a Reader. It must never
// panic, must fail only with io.EOF, a *FrameError, and every frame it
// accepts must pass Validate and re-encode to exactly the bytes it was
// read from.
func FuzzReadMessage(f *testing.F) {
	var all []byte
	for _, g := range golden {
		b := unhex(f, g.hex)
		f.Add(b)
		all = append(all, b...)
	}
	f.Add(all)
	f.Add(frame(MaxFrameSize+1, TypeChunk))
	f.Add(frame(57, TypeRequest, le64(0), zeros(33)))
	f.Add(frame(28, TypeAbort, le64(13), []byte("ab\n\x00")))

	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 4096)
		for {
			start := r.Offset()
			m, err := r.ReadMessage()
			if err == io.EOF {
				if start != int64(len(in)) {
					t.Fatalf("io.EOF at offset %d of %d", start, len(in))
				}
				return
			}
			if err != nil {
				var fe *FrameError
				if !errors.As(err, &fe) {
					t.Fatalf("error is not a *FrameError: %v", err)
				}
				if fe.Offset != start || Errno(err) == 0 {
					t.Fatalf("error %v at offset %d, frame started at %d", err, fe.Offset, start)
				}
				return
			}
			raw := in[start:r.Offset()]
			if err := Validate(m); err != nil {
				t.Fatalf("decoded %s fails Validate: %v", m.Type(), err)
			}
			if enc := m.Encode(nil); !bytes.Equal(enc, raw) {
				t.Fatalf("%s re-encodes to %x, read from %x", m.Type(), enc, raw)
			}
		}
	})
}
