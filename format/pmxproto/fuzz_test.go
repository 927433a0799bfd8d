package pmxproto_test

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// FuzzReadPacket reads arbitrary streams. It must never panic; every error is
// io.EOF, a *FrameError (and then sticky) or a *BodyError (and then reading
// goes on); every packet read passes Validate and re-encodes to exactly the
// bytes it was read from; every BodyError's Reply is a valid packet.
func FuzzReadPacket(f *testing.F) {
	var all []byte
	for _, g := range goldens() {
		b := unhex(f, g.hex)
		f.Add(b)
		all = append(all, b...)
	}
	f.Add(all)
	f.Add(header(1, 7, 16<<20+1))
	f.Add(frame(2, 8, make([]byte, 24)))
	f.Add(frame(3, 13, nil))

	f.Fuzz(func(t *testing.T, data []byte) {
		r := pmxproto.NewReader(bytes.NewReader(data))
		r.SetMaxPacketSize(1 << 20) // keep the fuzzer's allocations small
		for range 64 {
			start := r.Offset()
			p, err := r.ReadPacket()
			if err != nil {
				var be *pmxproto.BodyError
				var fe *pmxproto.FrameError
				switch {
				case errors.As(err, &be):
					if pmxproto.IsFatal(err) {
						t.Fatal("IsFatal(BodyError)")
					}
					if verr := be.Reply().Validate(); verr != nil {
						t.Fatalf("Reply of %v is invalid: %v", err, verr)
					}
					continue
				case errors.As(err, &fe):
					if _, again := r.ReadPacket(); again != err {
						t.Fatalf("framing error not sticky: %v then %v", err, again)
					}
					return
				case err == io.EOF:
					if start != int64(len(data)) {
						t.Fatalf("io.EOF at offset %d of %d", start, len(data))
					}
					return
				default:
					t.Fatalf("untyped error %T: %v", err, err)
				}
			}
			if verr := p.Validate(); verr != nil {
				t.Fatalf("decoded %#v fails Validate: %v", p, verr)
			}
			raw := data[start:r.Offset()]
			enc := p.Encode(nil)
			if !bytes.Equal(enc, raw) {
				t.Fatalf("%T re-encodes to\n%x\nread from\n%x", p, enc, raw)
			}
			again, err := pmxproto.NewReader(bytes.NewReader(enc)).ReadPacket()
			if err != nil || !reflect.DeepEqual(again, p) {
				t.Fatalf("re-decoding %#v: %#v, %v", p, again, err)
			}
		}
	})
}
