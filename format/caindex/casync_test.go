package caindex

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// needCasync returns the casync binary, skipping the test if it is absent
// (failing under CI=true, where it must be installed).
func needCasync(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("casync")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("casync is not installed (CI needs the Debian package casync)")
		}
		t.Skip("casync is not installed: apt-get install casync")
	}
	return p
}

// TestCasyncMakeBlob: for blob indexes written by the real `casync make`,
// Parse accepts them, the header is what BlobHeader gives, every chunk's
// id is the digest of its range of the file, every chunk is in the store,
// the Parser agrees, and Write reproduces the file byte for byte.
func TestCasyncMakeBlob(t *testing.T) {
	bin := needCasync(t)
	random := func(n int) []byte { b := make([]byte, n); rand.Read(b); return b }
	tests := []struct {
		name          string
		data          []byte
		args          []string
		digest        Digest
		min, avg, max uint64
		flags         FeatureFlags
	}{
		{"default", random(1_000_000), nil, SHA512_256, 16384, 65536, 262144, 0xb000000000000000},
		{"sha256 4096", append(random(600_000), make([]byte, 400_000)...), []string{"--digest=sha256", "--chunk-size=4096"}, SHA256, 1024, 4096, 16384, 0x9000000000000000},
		{"64:256:1024", random(100_000), []string{"--chunk-size=64:256:1024"}, SHA512_256, 64, 256, 1024, 0xb000000000000000},
		{"fixed size", random(50_000), []string{"--chunk-size=4096:4096:4096"}, SHA512_256, 4096, 4096, 4096, 0xb000000000000000},
		{"empty", nil, nil, SHA512_256, 16384, 65536, 262144, 0xb000000000000000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			blob, index, store := filepath.Join(dir, "blob"), filepath.Join(dir, "out.caibx"), filepath.Join(dir, "store.castr")
			if err := os.WriteFile(blob, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"make", "--store=" + store}, tc.args...)
			if out, err := exec.Command(bin, append(args, index, blob)...).CombinedOutput(); err != nil {
				t.Fatalf("casync make: %v\n%s", err, out)
			}
			file, err := os.ReadFile(index)
			if err != nil {
				t.Fatal(err)
			}

			x, err := Parse(bytes.NewReader(file), int64(len(file)))
			if err != nil {
				t.Fatalf("Parse of casync's index: %v", err)
			}
			want, err := BlobHeader(tc.digest, tc.min, tc.avg, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			if x.Header != want || x.Header.Flags != tc.flags || x.Digest() != tc.digest {
				t.Fatalf("header %v, want %v", x.Header, want)
			}
			if x.Size() != uint64(len(tc.data)) || FileSize(len(x.Chunks)) != int64(len(file)) {
				t.Fatalf("%d chunks cover %d bytes in a %d-byte index; the blob is %d bytes", len(x.Chunks), x.Size(), len(file), len(tc.data))
			}
			for i, e := range x.Chunks {
				if got := tc.digest.Sum(tc.data[e.Start:e.End]); got != e.ID {
					t.Fatalf("chunk %d [%d, %d): %s of the data is %x, the index says %x", i, e.Start, e.End, tc.digest, got, e.ID)
				}
				h := hex.EncodeToString(e.ID[:])
				if _, err := os.Stat(filepath.Join(store, h[:4], h+".cacnk")); err != nil {
					t.Fatalf("chunk %d not in casync's store: %v", i, err)
				}
			}

			var n int
			p := NewParser(0, func(e Entry) error {
				if e != x.Chunks[n] {
					t.Fatalf("Parser entry %d: %+v, Parse gave %+v", n, e, x.Chunks[n])
				}
				n++
				return nil
			})
			for rest := file; len(rest) > 0; rest = rest[min(97, len(rest)):] {
				if _, err := p.Write(rest[:min(97, len(rest))]); err != nil {
					t.Fatal(err)
				}
			}
			if err := p.Close(); err != nil || n != len(x.Chunks) {
				t.Fatalf("Parser: %v after %d entries", err, n)
			}

			var buf bytes.Buffer
			if err := Write(&buf, x.Header, x.Chunks); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), file) {
				t.Fatalf("Write gives %d bytes that differ from casync's %d", buf.Len(), len(file))
			}
		})
	}
}

// TestCasyncMakeArchive: an archive index (.caidx) carries the archive's
// --with bits; it parses, and re-encodes byte for byte.
func TestCasyncMakeArchive(t *testing.T) {
	bin := needCasync(t)
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	for i, n := range []int{10, 70_000, 300_000} {
		b := make([]byte, n)
		rand.Read(b)
		sub := filepath.Join(tree, "d", string(rune('a'+i)))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "f"), b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	index := filepath.Join(dir, "t.caidx")
	if out, err := exec.Command(bin, "make", "--store="+filepath.Join(dir, "s.castr"), index, tree).CombinedOutput(); err != nil {
		t.Fatalf("casync make: %v\n%s", err, out)
	}
	file, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	x, err := Parse(bytes.NewReader(file), 0)
	if err != nil {
		t.Fatalf("Parse of casync's .caidx: %v", err)
	}
	if x.Header.Flags&WithMask == 0 || x.Digest() != SHA512_256 || len(x.Chunks) == 0 {
		t.Fatalf("archive index header %v with %d chunks", x.Header, len(x.Chunks))
	}
	t.Logf("casync .caidx: %v, %d chunks, %d archive bytes", x.Header, len(x.Chunks), x.Size())
	var buf bytes.Buffer
	if _, err := x.WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), file) {
		t.Fatalf("WriteTo: %v; output equal: %v", err, bytes.Equal(buf.Bytes(), file))
	}
}
