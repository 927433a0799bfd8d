package chunker

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/bits"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// testData returns n deterministic bytes that look like real files: random
// stretches, repeats of earlier stretches, zero runs and low-entropy text.
// It uses only PCG's Uint64, whose output Go specifies, so the bytes (and the
// casync golden values below) do not change with Go releases.
func testData(seed uint64, n int) []byte {
	r := rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)
	intn := func(k int) int { return int(r.Uint64() % uint64(k)) }
	b := make([]byte, 0, n)
	for len(b) < n {
		seg := 1 + intn(300<<10)
		switch k := intn(10); {
		case k < 5: // random
			for range seg {
				b = append(b, byte(r.Uint64()>>32))
			}
		case k < 8 && len(b) > 0: // repeat of earlier data
			from := intn(len(b))
			seg = min(seg, len(b)-from)
			b = append(b, b[from:from+seg]...)
		case k < 9: // zeros
			b = append(b, make([]byte, seg)...)
		default: // text-like
			words := []string{"chunk ", "bridge ", "casync ", "proxmox ", "backup ", "\n"}
			for i := 0; i < seg; {
				w := words[intn(len(words))]
				b = append(b, w...)
				i += len(w)
			}
		}
	}
	return b[:n]
}

// chunkAll runs the chunker over r and returns the chunks' end offsets and
// SHA-256 ids.
func chunkAll(t testing.TB, r io.Reader, min, avg, max int) (ends []int64, ids [][32]byte) {
	t.Helper()
	c, err := New(r, min, avg, max)
	if err != nil {
		t.Fatal(err)
	}
	var off int64
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			return ends, ids
		}
		if err != nil {
			t.Fatal(err)
		}
		off += int64(len(chunk))
		ends = append(ends, off)
		ids = append(ids, sha256.Sum256(chunk))
	}
}

// windowHash computes casync's hash of one 48-byte window from its
// definition, XOR of rol32(T[b[i]], 47-i), without rolling.
func windowHash(w []byte) uint32 {
	var h uint32
	for i, b := range w {
		h ^= bits.RotateLeft32(table[b], WindowSize-1-i)
	}
	return h
}

// referenceEnds is a slow, literal reading of reference casync-protocol.md
// §4.5: for each candidate length L, hash the window ending there from
// scratch and apply the rules in order. It checks the optimized cut.
func referenceEnds(data []byte, min, avg, max int) []int64 {
	disc := discriminator(min, avg, max)
	var ends []int64
	for s := 0; s < len(data); {
		cut := len(data) - s // EOF ends the last chunk
		for L := 1; s+L <= len(data); L++ {
			if min == avg && avg == max {
				if L == avg {
					cut = L
					break
				}
				continue
			}
			if L < WindowSize { // the window fills first
				continue
			}
			if L >= max {
				cut = L
				break
			}
			if L < min {
				continue
			}
			if windowHash(data[s+L-WindowSize:s+L])%disc == disc-1 {
				cut = L
				break
			}
		}
		s += cut
		ends = append(ends, int64(s))
	}
	return ends
}

func equalEnds(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDiscriminator(t *testing.T) {
	cases := []struct {
		min, avg, max int
		want          uint32
	}{
		{16 << 10, 64 << 10, 256 << 10, 49535}, // reference §4.5
		{1024, 4096, 16384, 3075},
		{1000, 8000, 70000, 6009},
		{64, 256, 1024, 192},
		{1, 2, 48, 1},                         // 2/1.33 truncates to 1
		{1000, 1000, 1000, 1000},              // clamped up to min
		{1, 16 << 20, 64 << 20, 64 << 20},     // past the pole: max, as casync does
		{1 << 20, 4 << 20, 16 << 20, 5721670}, // the PMXBCKUP clients' 4 MiB average
	}
	for _, c := range cases {
		if got := discriminator(c.min, c.avg, c.max); got != c.want {
			t.Errorf("discriminator(%d, %d, %d) = %d, want %d", c.min, c.avg, c.max, got, c.want)
		}
	}
}

// TestDivisibility checks the multiply-only cut test against %.
func TestDivisibility(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	discs := []uint32{1, 2, 3, 7, 48, 1000, 3074, 49535, 1 << 16, 1<<16 + 1, 1 << 27, 1<<27 - 1, 134217727}
	for range 200 {
		discs = append(discs, 1+r.Uint32N(1<<27))
	}
	for _, d := range discs {
		c := &Chunker{min: 48, max: 1 << 27, disc: d}
		c.divC = ^uint64(0)/uint64(d) + 1
		hs := []uint32{0, 1, d - 1, d, d + 1, 2*d - 1, ^uint32(0), ^uint32(0) - 1, ^uint32(0) - d}
		for range 2000 {
			hs = append(hs, r.Uint32())
		}
		for _, h := range hs {
			target := d - 1
			fast := h >= target && uint64(h-target)*c.divC <= c.divC-1
			if slow := h%d == d-1; fast != slow {
				t.Fatalf("disc %d, h %d: fast test %v, %% test %v", d, h, fast, slow)
			}
		}
	}
}

func TestSizes(t *testing.T) {
	ok := []struct{ in, want [3]int }{
		{[3]int{0, 0, 0}, [3]int{16 << 10, 64 << 10, 256 << 10}},
		{[3]int{0, 4096, 0}, [3]int{1024, 4096, 16384}}, // casync --chunk-size=4096
		{[3]int{0, 1, 0}, [3]int{1, 1, 4}},              // fixed? no: 1:1:4 is refused below; derived max is 4
		{[3]int{16, 0, 1024}, [3]int{16, 128, 1024}},    // geometric mean
		{[3]int{1000, 0, 0}, [3]int{1000, 4000, 16000}},
		{[3]int{0, 0, 4000}, [3]int{250, 1000, 4000}},
		{[3]int{0, 64 << 20, 0}, [3]int{16 << 20, 64 << 20, 128 << 20}}, // max capped
		{[3]int{1, 1, 1}, [3]int{1, 1, 1}},
		{[3]int{8, 8, 8}, [3]int{8, 8, 8}},
		{[3]int{1, 2, 48}, [3]int{1, 2, 48}},
	}
	for _, c := range ok {
		min, avg, max, err := resolveSizes(c.in[0], c.in[1], c.in[2])
		if c.in == [3]int{0, 1, 0} {
			if err == nil {
				t.Errorf("0:1:0 (→1:1:4) accepted; casync refuses max 4 < 48")
			}
			continue
		}
		if err != nil || [3]int{min, avg, max} != c.want {
			t.Errorf("%v → %d:%d:%d, %v; want %v", c.in, min, avg, max, err, c.want)
		}
	}
	bad := [][3]int{
		{-1, 0, 0}, {0, -5, 0},
		{100, 50, 200},                               // min > avg
		{10, 100, 50},                                // max < avg
		{0, 129 << 20, 0},                            // avg over the limit
		{0, 0, 129 << 20},                            // max over the limit
		{4, 8, 16}, {1, 2, 47}, {1, 4, 4}, {1, 1, 4}, // casync: "Invalid argument"
	}
	for _, b := range bad {
		if _, err := New(bytes.NewReader(nil), b[0], b[1], b[2]); !errors.Is(err, ErrInvalidSizes) {
			t.Errorf("New(%v) = %v, want ErrInvalidSizes", b, err)
		}
	}
	c, err := New(nil, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if min, avg, max := c.Sizes(); min != DefaultMin || avg != DefaultAvg || max != DefaultMax {
		t.Errorf("Sizes() = %d %d %d", min, avg, max)
	}
}

// TestMatchesReference compares the optimized chunker with the literal one
// over several parameter sets, including min below the window, fixed size
// and the clamped discriminator.
func TestMatchesReference(t *testing.T) {
	data := testData(1, 1<<20)
	for _, p := range [][3]int{
		{64, 256, 1024}, {16, 64, 256}, {1, 2, 48}, {47, 64, 128}, {48, 64, 128}, {49, 64, 128},
		{1000, 8000, 70000}, {1024, 4096, 16384}, {4096, 4096, 4096}, {1, 1, 1},
		{16 << 10, 64 << 10, 256 << 10},
	} {
		want := referenceEnds(data, p[0], p[1], p[2])
		got, _ := chunkAll(t, bytes.NewReader(data), p[0], p[1], p[2])
		if !equalEnds(got, want) {
			t.Errorf("%v: %d chunks, reference %d; first difference at chunk %d", p, len(got), len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(a, b []int64) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDeterministic: the cuts depend on the data only, not on how reads
// split it.
func TestDeterministic(t *testing.T) {
	data := testData(2, 3<<20)
	want, wantIDs := chunkAll(t, bytes.NewReader(data), 0, 0, 0)
	readers := map[string]func() io.Reader{
		"one byte":   func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"half":       func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
		"data+EOF":   func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
		"odd chunks": func() io.Reader { return &oddReader{data: data} },
	}
	for name, mk := range readers {
		got, ids := chunkAll(t, mk(), 0, 0, 0)
		if !equalEnds(got, want) {
			t.Errorf("%s: cuts differ", name)
		}
		for i := range ids {
			if ids[i] != wantIDs[i] {
				t.Errorf("%s: chunk %d id differs", name, i)
				break
			}
		}
	}
}

// oddReader returns reads of varying sizes, sometimes empty.
type oddReader struct {
	data []byte
	n    int
}

func (o *oddReader) Read(b []byte) (int, error) {
	if len(o.data) == 0 {
		return 0, io.EOF
	}
	o.n++
	k := min(len(b), len(o.data), (o.n*7919)%100003)
	copy(b, o.data[:k])
	o.data = o.data[k:]
	return k, nil
}

func TestBounds(t *testing.T) {
	data := testData(3, 4<<20)
	for _, p := range [][3]int{{0, 0, 0}, {64, 256, 1024}, {1000, 8000, 70000}, {4096, 4096, 4096}} {
		c, _ := New(bytes.NewReader(data), p[0], p[1], p[2])
		min, _, max := c.Sizes()
		ends, _ := chunkAll(t, bytes.NewReader(data), p[0], p[1], p[2])
		var prev int64
		for i, e := range ends {
			n := int(e - prev)
			last := i == len(ends)-1
			if n < 1 || n > max || (!last && n < min) {
				t.Fatalf("%v: chunk %d is %d bytes", p, i, n)
			}
			prev = e
		}
		if prev != int64(len(data)) {
			t.Fatalf("%v: chunks cover %d of %d bytes", p, prev, len(data))
		}
	}
}

// TestResync: inserting bytes changes only the chunks around the edit; the
// chunker falls back into step and the rest are the same chunks.
func TestResync(t *testing.T) {
	data := testData(4, 8<<20)
	edited := append(append(append([]byte{}, data[:3<<20]...), "a few inserted bytes"...), data[3<<20:]...)
	_, a := chunkAll(t, bytes.NewReader(data), 0, 0, 0)
	_, b := chunkAll(t, bytes.NewReader(edited), 0, 0, 0)
	seen := map[[32]byte]bool{}
	for _, id := range a {
		seen[id] = true
	}
	changed := 0
	for _, id := range b {
		if !seen[id] {
			changed++
		}
	}
	if changed < 1 || changed > 3 {
		t.Fatalf("%d of %d chunks changed after one insertion; want 1..3", changed, len(b))
	}
	// The tails are identical.
	for i := 1; i <= 20; i++ {
		if a[len(a)-i] != b[len(b)-i] {
			t.Fatalf("chunk %d from the end differs", i)
		}
	}
}

func TestSmallInputs(t *testing.T) {
	if ends, _ := chunkAll(t, bytes.NewReader(nil), 0, 0, 0); len(ends) != 0 {
		t.Fatalf("empty input gave %v", ends)
	}
	for _, n := range []int{1, 47, 48, 100, DefaultMin - 1, DefaultMin} {
		ends, _ := chunkAll(t, bytes.NewReader(testData(5, n)), 0, 0, 0)
		if len(ends) != 1 || ends[0] != int64(n) {
			t.Errorf("%d bytes: %v, want one chunk", n, ends)
		}
	}
	// After EOF, EOF again.
	c, _ := New(bytes.NewReader([]byte("x")), 0, 0, 0)
	c.Next()
	for range 2 {
		if _, err := c.Next(); err != io.EOF {
			t.Fatalf("after the last chunk: %v", err)
		}
	}
}

func TestReadError(t *testing.T) {
	boom := errors.New("disk on fire")
	c, _ := New(io.MultiReader(bytes.NewReader(testData(6, 100<<10)), iotest.ErrReader(boom)), 0, 0, 0)
	_, err := c.Next()
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err2 := c.Next(); err2 != err {
		t.Fatalf("error not sticky: %v", err2)
	}
	c, _ = New(iotest.ErrReader(nil), 0, 0, 0) // (0, nil) forever
	if _, err := c.Next(); !errors.Is(err, io.ErrNoProgress) {
		t.Fatalf("reader without progress: %v", err)
	}
}

// TestMemoryBounded: the buffer is sized by max, not by the input.
func TestMemoryBounded(t *testing.T) {
	c, _ := New(io.LimitReader(zeroReader{}, 64<<20), 0, 0, 0)
	for {
		if _, err := c.Next(); err != nil {
			break
		}
	}
	if cap(c.buf) > 2*DefaultMax {
		t.Fatalf("buffer %d bytes for max %d", cap(c.buf), DefaultMax)
	}
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func BenchmarkChunker(b *testing.B) {
	data := testData(7, 64<<20)
	for _, p := range []struct {
		name          string
		min, avg, max int
	}{{"default-16k-64k-256k", 0, 0, 0}, {"1M-4M-16M", 1 << 20, 4 << 20, 16 << 20}} {
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				c, _ := New(bytes.NewReader(data), p.min, p.avg, p.max)
				for {
					if _, err := c.Next(); err != nil {
						break
					}
				}
			}
		})
	}
}

// BenchmarkChunkerSHA256 is the PMXBCKUP client's path: cut and hash.
func BenchmarkChunkerSHA256(b *testing.B) {
	data := testData(7, 64<<20)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		c, _ := New(bytes.NewReader(data), 0, 0, 0)
		for {
			chunk, err := c.Next()
			if err != nil {
				break
			}
			sha256.Sum256(chunk)
		}
	}
}
