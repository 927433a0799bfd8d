package chunker

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// caibx is the part of a casync blob index (reference casync-protocol.md
// §5) these tests compare.
type caibx struct {
	flags         uint64
	min, avg, max uint64
	ends          []int64
	ids           [][32]byte
}

const (
	caFormatIndex      = 0x96824d9c7b129ff9
	caFormatTable      = 0xe75b9e112f17417d
	caFormatTailMarker = 0x4b4f050e5549ecd1
	caDigestSHA512_256 = 0x2000000000000000
)

// parseCaibx reads a .caibx minimally but strictly: header, table header,
// items, tail, nothing after it.
func parseCaibx(b []byte) (*caibx, error) {
	le := binary.LittleEndian
	if len(b) < 48+16+40 || (len(b)-48-16-40)%40 != 0 {
		return nil, fmt.Errorf("caibx: %d bytes is not 104 + 40·N", len(b))
	}
	if le.Uint64(b) != 48 || le.Uint64(b[8:]) != caFormatIndex {
		return nil, fmt.Errorf("caibx: bad index header %x", b[:16])
	}
	if le.Uint64(b[48:]) != ^uint64(0) || le.Uint64(b[56:]) != caFormatTable {
		return nil, fmt.Errorf("caibx: bad table header %x", b[48:64])
	}
	x := &caibx{flags: le.Uint64(b[16:]), min: le.Uint64(b[24:]), avg: le.Uint64(b[32:]), max: le.Uint64(b[40:])}
	n := (len(b) - 48 - 16 - 40) / 40
	for k := range n {
		item := b[64+40*k:]
		x.ends = append(x.ends, int64(le.Uint64(item)))
		var id [32]byte
		copy(id[:], item[8:40])
		x.ids = append(x.ids, id)
	}
	tail := b[len(b)-40:]
	if le.Uint64(tail) != 0 || le.Uint64(tail[8:]) != 0 || le.Uint64(tail[16:]) != 48 ||
		le.Uint64(tail[24:]) != uint64(16+40*n+40) || le.Uint64(tail[32:]) != caFormatTailMarker {
		return nil, fmt.Errorf("caibx: bad tail %x", tail)
	}
	return x, nil
}

// casyncCases: parameter sets and file sizes (small ones for tiny chunks,
// which casync stores one file each).
var casyncCases = []struct {
	chunkSize     string // casync --chunk-size; "" for the default
	min, avg, max int
	size          int
}{
	{"", 0, 0, 0, 8 << 20},
	{"16384:65536:262144", 16 << 10, 64 << 10, 256 << 10, 8 << 20},
	{"4096", 0, 4096, 0, 8 << 20}, // casync derives 1024:4096:16384
	{"1000:8000:70000", 1000, 8000, 70000, 8 << 20},
	{"1048576:4194304:16777216", 1 << 20, 4 << 20, 16 << 20, 8 << 20}, // the PMXBCKUP clients' sizes
	{"65536:65536:65536", 64 << 10, 64 << 10, 64 << 10, 8 << 20},      // fixed size
	{"64:256:1024", 64, 256, 1024, 512 << 10},
	{"16:64:256", 16, 64, 256, 256 << 10},                   // min below the window
	{"1:16777216:67108864", 1, 16 << 20, 64 << 20, 8 << 20}, // discriminator past the pole
	{"1:2:48", 1, 2, 48, 64 << 10},                          // discriminator 1: cut as soon as allowed
}

// TestCasyncEquality runs the real casync over the same file and requires
// the same chunks: same end offsets, same SHA-256 ids, in the same order.
func TestCasyncEquality(t *testing.T) {
	bin, err := exec.LookPath("casync")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("casync is not installed; CI needs it (apt-get install casync)")
		}
		t.Skip("casync is not installed; apt-get install casync to run this test")
	}
	dir := t.TempDir()
	data := testData(8, 8<<20)
	for _, c := range casyncCases {
		name := c.chunkSize
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dir, "blob")
			if err := os.WriteFile(file, data[:c.size], 0o644); err != nil {
				t.Fatal(err)
			}
			store, index := t.TempDir(), filepath.Join(t.TempDir(), "x.caibx")
			args := []string{"make", "--digest=sha256", "--store=" + store}
			if c.chunkSize != "" {
				args = append(args, "--chunk-size="+c.chunkSize)
			}
			out, err := exec.CommandContext(t.Context(), bin, append(args, index, file)...).CombinedOutput()
			if err != nil {
				t.Fatalf("casync %v: %v\n%s", args, err, out)
			}
			raw, err := os.ReadFile(index)
			if err != nil {
				t.Fatal(err)
			}
			want, err := parseCaibx(raw)
			if err != nil {
				t.Fatal(err)
			}
			if want.flags&caDigestSHA512_256 != 0 {
				t.Fatalf("casync wrote flags %#x: SHA-512/256, not SHA-256", want.flags)
			}
			ch, err := New(bytes.NewReader(nil), c.min, c.avg, c.max)
			if err != nil {
				t.Fatal(err)
			}
			if min, avg, max := ch.Sizes(); uint64(min) != want.min || uint64(avg) != want.avg || uint64(max) != want.max {
				t.Fatalf("sizes %d:%d:%d, casync's index says %d:%d:%d", min, avg, max, want.min, want.avg, want.max)
			}
			ends, ids := chunkAll(t, bytes.NewReader(data[:c.size]), c.min, c.avg, c.max)
			if len(ends) != len(want.ends) {
				t.Errorf("%d chunks, casync %d", len(ends), len(want.ends))
			}
			for i := range min(len(ends), len(want.ends)) {
				if ends[i] != want.ends[i] || ids[i] != want.ids[i] {
					t.Fatalf("chunk %d: end %d id %x; casync: end %d id %x", i, ends[i], ids[i][:8], want.ends[i], want.ids[i][:8])
				}
			}
			t.Logf("%d chunks identical to casync's", len(ends))
		})
	}
}

// casyncGolden: what casync 2+20201210 (Debian) made of testData(8, n), so
// that equality is checked where casync is not installed. The digest is
// SHA-256 over all (end u64 LE, id) items of the .caibx table.
var casyncGolden = []struct {
	min, avg, max, size int
	chunks              int
	tableSHA256         string
}{
	{16384, 65536, 262144, 8388608, 90, "31e133310562a6468ec8c2374d4c65cc7376de547e2658f7b8673492ca248337"},      // default
	{1024, 4096, 16384, 8388608, 1838, "30c8582ba9cf632cc9a5e1dab66287a13eb3bf3d9433406d047e2f19033e8f52"},       // --chunk-size=4096
	{1000, 8000, 70000, 8388608, 1068, "94add00e166598606122cca503162461e28b297349089f08a7b317b7cdc5240f"},       // 1000:8000:70000
	{1048576, 4194304, 16777216, 8388608, 3, "e5dc24239f0b254200efc0b8a36442e4af5149ec176c3a42833b8556c33a11ba"}, // 1M:4M:16M
	{65536, 65536, 65536, 8388608, 128, "e6412a44766c7d1975a1a8cb391e867fe45789949d2c1fbb0946fe4376ee14ee"},      // fixed
	{64, 256, 1024, 524288, 1514, "47b022ad87f7eb230b325cc0bc60cdaa20712446f5974ce1911b3667be16078f"},            // 64:256:1024
	{16, 64, 256, 262144, 1631, "faf10ae7fa0789e2a20ddaaf41b41167f9ede1b10bfa75693e17f9085c86c6a2"},              // 16:64:256
	{1, 16777216, 67108864, 8388608, 1, "25b429fb9359f71a902477d135848216ac6d971a4a864bf13a8f23204a0c1660"},      // past the pole
	{1, 2, 48, 65536, 1366, "c056557a8990420354ba97405734cb23dbc39998ba88d0a0d5d4d291f86c5723"},                  // discriminator 1
}

func tableDigest(ends []int64, ids [][32]byte) string {
	h := sha256.New()
	for i := range ends {
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(ends[i])))
		h.Write(ids[i][:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestCasyncGolden(t *testing.T) {
	data := testData(8, 8<<20)
	for _, g := range casyncGolden {
		ends, ids := chunkAll(t, bytes.NewReader(data[:g.size]), g.min, g.avg, g.max)
		if len(ends) != g.chunks || tableDigest(ends, ids) != g.tableSHA256 {
			t.Errorf("%d:%d:%d over %d bytes: %d chunks, table %s; casync made %d chunks, table %s",
				g.min, g.avg, g.max, g.size, len(ends), tableDigest(ends, ids), g.chunks, g.tableSHA256)
		}
	}
}
