package pbsindex_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsindex"
)

func scanAll(b []byte, max int) (pbsindex.Kind, []pbsindex.Digest, error) {
	var ds []pbsindex.Digest
	kind, err := pbsindex.Scan(bytes.NewReader(b), max, func(d pbsindex.Digest) error { ds = append(ds, d); return nil })
	return kind, ds, err
}

// agreeWithScan: where the whole-file reader of kind accepts b, Scan yields
// the same digests; where it refuses b, Scan refuses too (unless b is the
// other kind, which Scan reads).
func agreeWithScan(t *testing.T, b []byte, kind pbsindex.Kind, digests func() []pbsindex.Digest, readErr error) {
	t.Helper()
	gotKind, got, err := scanAll(b, 1<<16)
	if readErr == nil {
		if err != nil || gotKind != kind || !slices.Equal(got, digests()) {
			t.Fatalf("Scan = kind %d, %d digests, %v; the reader accepted %d digests", gotKind, len(got), err, len(digests()))
		}
		return
	}
	if err == nil && gotKind == kind {
		t.Fatalf("Scan accepted what the reader refused: %v", readErr)
	}
}

func TestScan(t *testing.T) {
	fixed := &pbsindex.Fixed{Size: 10, ChunkSize: 4, Digests: []pbsindex.Digest{digest("a"), digest("b"), digest("a")}}
	var fb bytes.Buffer
	if err := pbsindex.WriteFixed(&fb, fixed); err != nil {
		t.Fatal(err)
	}
	dyn := &pbsindex.Dynamic{}
	var want []pbsindex.Digest
	for i := range 5000 { // more than one read buffer
		d := digest(string(rune('a' + i%7)))
		dyn.Entries = append(dyn.Entries, pbsindex.DynamicEntry{End: uint64(i+1) * 3, Digest: d})
		want = append(want, d)
	}
	var db bytes.Buffer
	if err := pbsindex.WriteDynamic(&db, dyn); err != nil {
		t.Fatal(err)
	}
	if kind, got, err := scanAll(fb.Bytes(), 0); err != nil || kind != pbsindex.KindFixed || !slices.Equal(got, fixed.Digests) {
		t.Fatalf("Scan(fixed) = %d, %v, %v", kind, got, err)
	}
	if kind, got, err := scanAll(db.Bytes(), 0); err != nil || kind != pbsindex.KindDynamic || !slices.Equal(got, want) {
		t.Fatalf("Scan(dynamic) = %d, %d digests, %v", kind, len(got), err)
	}
	if _, _, err := scanAll(db.Bytes(), 4999); !errors.Is(err, pbsindex.ErrTooManyEntries) {
		t.Fatalf("Scan over the entry limit = %v", err)
	}
	if _, _, err := scanAll(fb.Bytes()[:fb.Len()-1], 0); err == nil {
		t.Fatal("Scan of a truncated fixed index succeeded")
	}
	if _, _, err := scanAll(append(db.Bytes(), 1, 2, 3), 0); err == nil {
		t.Fatal("Scan of a dynamic index with trailing bytes succeeded")
	}
	if _, _, err := scanAll(bytes.Repeat([]byte{'x'}, 5000), 0); err == nil {
		t.Fatal("Scan of a file without a magic succeeded")
	}
	stop := errors.New("stop")
	n := 0
	if _, err := pbsindex.Scan(bytes.NewReader(db.Bytes()), 0, func(pbsindex.Digest) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Scan stopped by its callback: %v after %d", err, n)
	}
}
