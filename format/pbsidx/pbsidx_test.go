package pbsidx_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsidx"
)

func digest(i int) pbsidx.Digest { return sha256.Sum256([]byte{byte(i), byte(i >> 8)}) }

func TestFixedRoundTripAndCsum(t *testing.T) {
	f := &pbsidx.Fixed{CTime: 1700000000, Size: 10<<20 + 5, ChunkSize: 4 << 20, Digests: []pbsidx.Digest{digest(1), digest(2), digest(3)}}
	b, err := pbsidx.AppendFixed(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != pbsidx.HeaderSize+3*32 || !bytes.Equal(b[:8], pbsidx.FixedMagic[:]) {
		t.Fatalf("encoding: %d bytes, magic % x", len(b), b[:8])
	}
	// index_csum is SHA-256 over the digests, as the reference says.
	var all []byte
	for i := 1; i <= 3; i++ {
		d := digest(i)
		all = append(all, d[:]...)
	}
	want := sha256.Sum256(all)
	if !bytes.Equal(b[32:64], want[:]) {
		t.Fatal("wrong index_csum")
	}
	got, err := pbsidx.ParseFixed(b, 0)
	if err != nil || got.Size != f.Size || got.ChunkSize != f.ChunkSize || len(got.Digests) != 3 || got.Digests[2] != digest(3) || got.CTime != f.CTime {
		t.Fatalf("parse: %+v, %v", got, err)
	}
	b[pbsidx.HeaderSize] ^= 1
	if _, err := pbsidx.ParseFixed(b, 0); !errors.Is(err, pbsidx.ErrCsum) {
		t.Fatalf("a changed digest: %v", err)
	}
	if _, err := pbsidx.ParseFixed(b[:pbsidx.HeaderSize+64], 0); !errors.Is(err, pbsidx.ErrInvalid) {
		t.Fatalf("a missing slot: %v", err)
	}
	if _, err := pbsidx.AppendFixed(nil, &pbsidx.Fixed{Size: 10, ChunkSize: 4}); err == nil {
		t.Fatal("an index without its slots was encoded")
	}
}

func TestDynamicRoundTripAndCsum(t *testing.T) {
	d := &pbsidx.Dynamic{CTime: 5, Entries: []pbsidx.DynamicEntry{{End: 100, Digest: digest(1)}, {End: 250, Digest: digest(2)}}}
	b, err := pbsidx.AppendDynamic(nil, d)
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	raw = binary.LittleEndian.AppendUint64(raw, 100)
	d1, d2 := digest(1), digest(2)
	raw = append(raw, d1[:]...)
	raw = binary.LittleEndian.AppendUint64(raw, 250)
	raw = append(raw, d2[:]...)
	want := sha256.Sum256(raw)
	if !bytes.Equal(b[32:64], want[:]) || !bytes.Equal(b[pbsidx.HeaderSize:], raw) {
		t.Fatal("wrong encoding")
	}
	got, err := pbsidx.ParseDynamic(b, 0)
	if err != nil || got.Size() != 250 || len(got.Entries) != 2 {
		t.Fatalf("parse: %+v, %v", got, err)
	}
	if _, err := pbsidx.ParseDynamic(b, 1); !errors.Is(err, pbsidx.ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := pbsidx.ParseFixed(b, 0); !errors.Is(err, pbsidx.ErrBadMagic) {
		t.Fatalf("a dynamic index as fixed: %v", err)
	}
	if _, err := pbsidx.AppendDynamic(nil, &pbsidx.Dynamic{Entries: []pbsidx.DynamicEntry{{End: 9}, {End: 9}}}); err == nil {
		t.Fatal("an empty chunk was encoded")
	}
	empty, _ := pbsidx.AppendDynamic(nil, &pbsidx.Dynamic{})
	if d, err := pbsidx.ParseDynamic(empty, 0); err != nil || len(d.Entries) != 0 {
		t.Fatalf("empty index: %v", err)
	}
}
