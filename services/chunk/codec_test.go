package chunk

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Incompressible chunks are stored as zstd frames of raw blocks, which
// zstd's own decoder (casync's) and the service's read back exactly;
// compressible ones are still compressed.
func TestStoredFrame(t *testing.T) {
	c, err := newCodec()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 128 << 10, 128<<10 + 1, probeMin, 4<<20 + 3} {
		data := make([]byte, n)
		rand.Read(data)
		frame := storedFrame(data)
		if want := len(data) + 4 + 1 + 8 + 4 + 3*max(1, (n+(128<<10)-1)/(128<<10)); len(frame) != want {
			t.Fatalf("%d bytes: frame of %d, want %d", n, len(frame), want)
		}
		got, err := c.decodeZstd(frame)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: decoded %d bytes, %v", n, len(got), err)
		}
		if zstdCLI, err := exec.LookPath("zstd"); err == nil {
			dir := t.TempDir()
			in := filepath.Join(dir, "x.zst")
			os.WriteFile(in, frame, 0o644)
			out, err := exec.Command(zstdCLI, "-d", "-c", "--no-progress", in).Output()
			if err != nil || !bytes.Equal(out, data) {
				t.Fatalf("%d bytes: zstd -d: %v, %d bytes", n, err, len(out))
			}
		}
		corrupt := bytes.Clone(frame)
		if n > 0 {
			corrupt[len(corrupt)-5] ^= 1 // the last data byte: the checksum catches it
			if _, err := c.decodeZstd(corrupt); err == nil {
				t.Fatalf("%d bytes: a corrupt frame decoded", n)
			}
		}
	}
	random := make([]byte, 1<<20)
	rand.Read(random)
	if !c.incompressible(random) {
		t.Error("random data was found compressible")
	}
	text := bytes.Repeat([]byte("compressible text, "), (1<<20)/19)
	if c.incompressible(text) {
		t.Error("text was found incompressible")
	}
	if f := c.compress(text); len(f) > len(text)/10 {
		t.Errorf("text compressed to %d of %d bytes", len(f), len(text))
	}
	if f := c.compress(random); len(f) != len(storedFrame(random)) {
		t.Errorf("random data stored in %d bytes, want a raw frame", len(f))
	}
}
