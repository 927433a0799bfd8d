package pbsidx_test

import (
	"bytes"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsidx"
)

// FuzzParse: neither parser panics, and whatever one accepts encodes back
// to the same bytes.
func FuzzParse(f *testing.F) {
	fixed, _ := pbsidx.AppendFixed(nil, &pbsidx.Fixed{Size: 9, ChunkSize: 4, Digests: []pbsidx.Digest{digest(1), digest(2), digest(3)}})
	dynamic, _ := pbsidx.AppendDynamic(nil, &pbsidx.Dynamic{Entries: []pbsidx.DynamicEntry{{End: 3, Digest: digest(1)}}})
	f.Add(fixed)
	f.Add(dynamic)
	f.Add(fixed[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		if x, err := pbsidx.ParseFixed(b, 1<<16); err == nil {
			out, err := pbsidx.AppendFixed(nil, x)
			if err != nil || !bytes.Equal(out, b) {
				t.Fatalf("fixed: re-encoding differs (%v)", err)
			}
		}
		if x, err := pbsidx.ParseDynamic(b, 1<<16); err == nil {
			out, err := pbsidx.AppendDynamic(nil, x)
			if err != nil || !bytes.Equal(out, b) {
				t.Fatalf("dynamic: re-encoding differs (%v)", err)
			}
		}
	})
}
