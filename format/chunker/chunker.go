// Package chunker splits a byte stream into content-defined chunks exactly
// where casync cuts it: a buzhash rolling hash over a 48-byte window, cut
// when the hash modulo a discriminator derived from the average size equals
// the discriminator minus one, within the minimum and maximum sizes
// (reference/casync-protocol.md §4.5). The same file therefore yields the
// same chunks, and with SHA-256 the same chunk ids, whether it is stored by
// `casync make --digest=sha256` or by the PMXBCKUP client (DESIGN §7).
//
// Memory is bounded by the maximum chunk size: the chunker holds at most
// twice that (at least 64 KiB) of the input at a time.
package chunker

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
)

// Sizes, as casync defines them.
const (
	// WindowSize is the number of bytes the rolling hash covers.
	WindowSize = 48
	// DefaultMin, DefaultAvg and DefaultMax are casync's default chunk
	// sizes, used by New(r, 0, 0, 0).
	DefaultMin = 16 << 10
	DefaultAvg = 64 << 10  // the default average chunk size
	DefaultMax = 256 << 10 // the default maximum chunk size
	// SizeLimitMin and SizeLimitMax bound every size parameter.
	SizeLimitMin = 1
	SizeLimitMax = 128 << 20 // the largest allowed chunk size parameter
)

// ErrInvalidSizes is wrapped by every error New returns for parameters that
// casync would refuse.
var ErrInvalidSizes = errors.New("chunker: invalid chunk sizes")

// minBuffer keeps small maximum sizes from turning into tiny reads.
const minBuffer = 64 << 10

// tableOut is table rotated left by WindowSize mod 32 = 16: the term that
// removes the byte leaving the window after WindowSize rotations.
var tableOut = func() (t [256]uint32) {
	for i, v := range table {
		t[i] = bits.RotateLeft32(v, WindowSize%32)
	}
	return t
}()

// Chunker cuts chunks from a reader. It is not safe for concurrent use.
type Chunker struct {
	r             io.Reader
	min, avg, max int
	fixed         bool   // min == avg == max: cut every avg bytes, no hashing
	disc          uint32 // discriminator: cut when h % disc == disc-1
	divC          uint64 // ceil(2^64 / disc), for the divisibility test

	buf        []byte
	start, end int   // unconsumed input is buf[start:end]
	offset     int64 // stream offset of buf[start]
	eof        bool
	err        error // sticky read error
}

// New returns a Chunker of r. The sizes follow casync's rules for
// --chunk-size=MIN:AVG:MAX, where 0 means "derive it":
//
//   - avg 0 becomes the geometric mean of min and max if both are given,
//     else min×4, else max/4, else DefaultAvg (clamped to the size limits);
//   - min 0 becomes avg/4 (at least 1); max 0 becomes avg×4 (at most
//     SizeLimitMax);
//   - then SizeLimitMin ≤ min ≤ avg ≤ max ≤ SizeLimitMax must hold, and,
//     unless min == avg == max (a fixed-size chunker), max ≥ WindowSize.
//
// New(r, 0, 0, 0) uses casync's defaults 16/64/256 KiB.
func New(r io.Reader, min, avg, max int) (*Chunker, error) {
	min, avg, max, err := resolveSizes(min, avg, max)
	if err != nil {
		return nil, err
	}
	c := &Chunker{
		r:     r,
		min:   min,
		avg:   avg,
		max:   max,
		fixed: min == avg && avg == max,
		disc:  discriminator(min, avg, max),
		buf:   make([]byte, maxInt(2*max, minBuffer)),
	}
	c.divC = math.MaxUint64/uint64(c.disc) + 1 // wraps to 0 for disc 1: everything is divisible by 1
	return c, nil
}

// Sizes returns the minimum, average and maximum chunk sizes in use, as a
// casync index header records them.
func (c *Chunker) Sizes() (min, avg, max int) { return c.min, c.avg, c.max }

// Next returns the next chunk. It returns io.EOF after the last chunk, which
// may be shorter than the minimum; every other chunk is between the minimum
// and the maximum size. A read error is returned as soon as it happens and
// from every later call.
//
// The chunk aliases the Chunker's buffer and is valid only until the next
// call; copy it to keep it.
func (c *Chunker) Next() ([]byte, error) {
	if c.end-c.start < c.max && !c.eof && c.err == nil {
		c.fill()
	}
	if c.err != nil {
		return nil, c.err
	}
	if c.start == c.end {
		return nil, io.EOF
	}
	n := c.cut(c.buf[c.start:c.end])
	chunk := c.buf[c.start : c.start+n : c.start+n]
	c.start += n
	c.offset += int64(n)
	return chunk, nil
}

// fill reads until max bytes are buffered past start, or the input ends or
// fails.
func (c *Chunker) fill() {
	if len(c.buf)-c.start < c.max {
		// Not room for a whole chunk after start: move the unconsumed
		// tail, less than max bytes, to the front.
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for empty := 0; c.end-c.start < c.max; {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		switch {
		case err == io.EOF:
			c.eof = true
			return
		case err != nil:
			c.err = fmt.Errorf("chunker: reading input at offset %d: %w", c.offset+int64(c.end-c.start), err)
			return
		case n == 0:
			if empty++; empty >= 100 {
				c.err = fmt.Errorf("chunker: reading input at offset %d: %w", c.offset+int64(c.end-c.start), io.ErrNoProgress)
				return
			}
		default:
			empty = 0
		}
	}
}

// cut returns the length of the chunk at the start of data, which holds at
// least max bytes unless the input ends within them.
func (c *Chunker) cut(data []byte) int {
	limit := minInt(len(data), c.max)
	if c.fixed {
		return limit
	}
	// casync fills the window before its first test, and never tests below
	// min; the first candidate cut is therefore at max(min, WindowSize),
	// with the window being the 48 bytes before it.
	first := maxInt(c.min, WindowSize)
	if limit <= first {
		return limit // the input ends before the first candidate, or max is reached there
	}
	var h uint32
	for _, b := range data[first-WindowSize : first] {
		h = bits.RotateLeft32(h, 1) ^ table[b]
	}
	d := data[:limit]
	target, divC := c.disc-1, c.divC
	for i := first; i < len(d); i++ {
		// h % disc == disc-1  ⇔  h ≥ disc-1 and disc divides h-(disc-1);
		// the divisibility test is one multiplication (Lemire et al.,
		// "Faster remainder by direct computation", 2019).
		if h >= target && uint64(h-target)*divC <= divC-1 {
			return i
		}
		h = bits.RotateLeft32(h, 1) ^ tableOut[d[i-WindowSize]] ^ table[d[i]]
	}
	return limit
}

// resolveSizes applies casync's defaults and checks (ca_chunker_set_size,
// plus the casync tool's refusal of max < WindowSize for a hashing chunker).
func resolveSizes(min, avg, max int) (int, int, int, error) {
	if min < 0 || avg < 0 || max < 0 {
		return 0, 0, 0, fmt.Errorf("%w: %d:%d:%d has a negative size", ErrInvalidSizes, min, avg, max)
	}
	in := fmt.Sprintf("%d:%d:%d", min, avg, max)
	if avg == 0 {
		switch {
		case min != 0 && max != 0:
			avg = int(math.RoundToEven(math.Pow(2, (math.Log2(float64(min))+math.Log2(float64(max)))/2)))
		case min != 0:
			avg = min * 4
		case max != 0:
			avg = max / 4
		default:
			avg = DefaultAvg
		}
		avg = minInt(maxInt(avg, SizeLimitMin), SizeLimitMax)
	} else if avg > SizeLimitMax {
		return 0, 0, 0, fmt.Errorf("%w: %s: average %d exceeds the limit %d", ErrInvalidSizes, in, avg, SizeLimitMax)
	}
	if min == 0 {
		min = maxInt(avg/4, SizeLimitMin)
	} else if min > avg {
		return 0, 0, 0, fmt.Errorf("%w: %s: minimum %d exceeds the average %d", ErrInvalidSizes, in, min, avg)
	}
	if max == 0 {
		max = minInt(avg*4, SizeLimitMax)
	} else if max > SizeLimitMax {
		return 0, 0, 0, fmt.Errorf("%w: %s: maximum %d exceeds the limit %d", ErrInvalidSizes, in, max, SizeLimitMax)
	} else if max < avg {
		return 0, 0, 0, fmt.Errorf("%w: %s: maximum %d is below the average %d", ErrInvalidSizes, in, max, avg)
	}
	if !(min == avg && avg == max) && max < WindowSize {
		return 0, 0, 0, fmt.Errorf("%w: %s: maximum %d is below the %d-byte hash window (only min = avg = max, a fixed-size chunker, may be smaller)",
			ErrInvalidSizes, in, max, WindowSize)
	}
	return min, avg, max, nil
}

// discriminator is casync's d(avg) = avg / (-1.42888852e-7·avg + 1.33237515),
// truncated, clamped to [min, max]. Past avg ≈ 9.3 MB the denominator turns
// negative; casync's conversion of that to size_t wraps to a huge value on
// x86-64, which the clamp turns into max (checked against the binary), so a
// non-positive or overflowing quotient means max here too.
func discriminator(min, avg, max int) uint32 {
	q := float64(avg) / (-1.42888852e-7*float64(avg) + 1.33237515)
	d := max
	if q > 0 && q < float64(max) {
		d = int(q)
	}
	d = minInt(maxInt(d, min), max)
	return uint32(d)
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
