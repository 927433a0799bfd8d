package caindex

import (
	"bytes"
	"errors"
	"testing"
)

func TestScan(t *testing.T) {
	h, err := BlobHeader(SHA256, 1, 4096, 16384)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, _ := NewWriter(&b, h)
	for i := range 3 {
		w.Add([IDSize]byte{byte(i)}, 100)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var ids []byte
	var got Header
	rd, err := Scan(bytes.NewReader(b.Bytes()), 0, func(h Header) error { got = h; return nil },
		func(e Entry) error { ids = append(ids, e.ID[0]); return nil })
	if err != nil || got != h || !bytes.Equal(ids, []byte{0, 1, 2}) || rd.Chunks() != 3 || rd.Size() != 300 {
		t.Fatalf("Scan = %v, header %v, ids %v", err, got, ids)
	}
	stop := errors.New("stop")
	if _, err := Scan(bytes.NewReader(b.Bytes()), 0, nil, func(Entry) error { return stop }); err != stop {
		t.Fatalf("a callback's error came back as %v", err)
	}
	var fe *FormatError
	if _, err := Scan(bytes.NewReader(b.Bytes()[:b.Len()-7]), 0, nil, func(Entry) error { return nil }); !errors.As(err, &fe) {
		t.Fatalf("truncated index: %v, want a *FormatError", err)
	}
}
