package caindex

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Entry is one chunk of the indexed stream.
type Entry struct {
	// Start and End are the chunk's byte range in the stream: [Start, End).
	// The file stores only End; Start is the previous entry's End (0 for
	// the first).
	Start, End uint64
	// ID is the digest of the chunk's uncompressed data.
	ID [IDSize]byte
}

// Size returns the chunk's length in bytes.
func (e Entry) Size() uint64 { return e.End - e.Start }

// Index is a whole index file, parsed.
type Index struct {
	// Header is the file's INDEX header.
	Header Header
	// Chunks are the table's items in file order: contiguous, from 0.
	Chunks []Entry
}

// Size returns the length of the indexed stream: the last chunk's End.
func (x *Index) Size() uint64 {
	if len(x.Chunks) == 0 {
		return 0
	}
	return x.Chunks[len(x.Chunks)-1].End
}

// Digest returns the digest that names the index's chunks.
func (x *Index) Digest() Digest { return x.Header.Digest() }

// table checks table records one at a time, in order.
type table struct {
	n       int64  // items accepted so far
	prevEnd uint64 // end offset of the last item, 0 before the first
	max     uint64 // chunk_size_max
}

// record decodes the 40-byte record at file offset off: an item, or
// (tail true) a valid tail. It applies casync's checks: end offsets
// strictly increase, no chunk exceeds chunk_size_max, and the tail's
// fields are exactly 0, 0, 48, the table size, the marker.
func (t *table) record(b []byte, off int64) (e Entry, tail bool, fe *FormatError) {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	end := u(0)
	if end == 0 {
		// An item's end offset is above the previous one, so above 0:
		// a record starting with 0 can only be the tail.
		switch {
		case u(4) != TailMarker:
			return e, false, formatErr(off+32, "tail.marker", ErrMalformed,
				"0x%016x, want 0x%016x (a record whose first field is 0 can only be the tail)", u(4), TailMarker)
		case u(1) != 0:
			return e, false, formatErr(off+8, "tail.zero_fill2", ErrMalformed, "0x%x, want 0", u(1))
		case u(2) != HeaderSize:
			return e, false, formatErr(off+16, "tail.index_offset", ErrMalformed, "%d, want %d", u(2), HeaderSize)
		case u(3) != tableSize(t.n):
			return e, false, formatErr(off+24, "tail.size", ErrMalformed, "%d, want %d for a table of %d items", u(3), tableSize(t.n), t.n)
		}
		return e, true, nil
	}
	if end <= t.prevEnd {
		return e, false, formatErr(off, fmt.Sprintf("item[%d].offset", t.n), ErrMalformed,
			"end offset %d is not above the previous end offset %d", end, t.prevEnd)
	}
	if size := end - t.prevEnd; size > t.max {
		return e, false, formatErr(off, fmt.Sprintf("item[%d].offset", t.n), ErrMalformed,
			"chunk [%d, %d) is %d bytes, more than chunk_size_max %d", t.prevEnd, end, size, t.max)
	}
	e = Entry{Start: t.prevEnd, End: end, ID: [IDSize]byte(b[8:40])}
	t.prevEnd, t.n = end, t.n+1
	return e, false, nil
}

func maxSizeOrDefault(n int64) int64 {
	if n <= 0 {
		return DefaultMaxSize
	}
	return n
}

func tooLarge(off int64, max int64) *FormatError {
	return formatErr(off, "", ErrTooLarge, "the index goes on past the %d-byte limit", max)
}

// Reader reads an index from a stream one entry at a time, checking as it
// goes, so a large index is never held in memory.
type Reader struct {
	br   *bufio.Reader
	max  int64
	off  int64
	head bool
	hdr  Header
	t    table
	err  error // sticky; io.EOF after the tail
	buf  [HeaderSize + TableHeaderSize]byte
}

// NewReader returns a Reader that refuses an index larger than maxSize
// bytes (<= 0 means DefaultMaxSize). The Reader buffers: r must not be
// read by anything else afterwards.
func NewReader(r io.Reader, maxSize int64) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), max: maxSizeOrDefault(maxSize)}
}

// Header reads and checks the header, if Next has not already, and
// returns it.
func (r *Reader) Header() (Header, error) {
	if !r.head && r.err == nil {
		if err := r.readHead(); err != nil {
			r.err = err
		}
	}
	if !r.head {
		return Header{}, r.err
	}
	return r.hdr, nil
}

// Next returns the next chunk. After the last one it checks the tail and
// that nothing follows it, and returns io.EOF. Any other error is a
// *FormatError (ErrMalformed, ErrUnsupported, ErrTruncated, ErrTooLarge)
// or the underlying reader's error, wrapped; errors are sticky.
func (r *Reader) Next() (Entry, error) {
	if _, err := r.Header(); err != nil {
		return Entry{}, err
	}
	if r.err != nil {
		return Entry{}, r.err
	}
	e, err := r.next()
	if err != nil {
		r.err = err
	}
	return e, err
}

// Offset returns the number of bytes read and checked so far.
func (r *Reader) Offset() int64 { return r.off }

// Chunks returns the number of entries returned so far.
func (r *Reader) Chunks() int64 { return r.t.n }

// Size returns the stream length the entries so far cover.
func (r *Reader) Size() uint64 { return r.t.prevEnd }

func (r *Reader) readHead() error {
	b := r.buf[:HeaderSize+TableHeaderSize]
	if err := r.read(b, "the header"); err != nil {
		return err
	}
	h, fe := parseHead(b)
	if fe != nil {
		return fe
	}
	r.hdr, r.head, r.t.max = h, true, h.ChunkSizeMax
	return nil
}

func (r *Reader) next() (Entry, error) {
	b := r.buf[:ItemSize]
	start := r.off
	if err := r.read(b, ""); err != nil {
		return Entry{}, err
	}
	e, tail, fe := r.t.record(b, start)
	if fe != nil {
		return Entry{}, fe
	}
	if !tail {
		return e, nil
	}
	// casync reads one byte more than it expects: anything there is an error.
	var one [1]byte
	switch k, err := io.ReadFull(r.br, one[:]); {
	case k > 0:
		return Entry{}, formatErr(r.off, "", ErrMalformed, "data follows the table's tail")
	case err != io.EOF:
		return Entry{}, fmt.Errorf("caindex: reading past the tail at offset %d: %w", r.off, err)
	}
	return Entry{}, io.EOF
}

// read fills b from the stream, within the size limit. what names the part
// for a truncation error ("" for an item or the tail).
func (r *Reader) read(b []byte, what string) error {
	if r.off+int64(len(b)) > r.max {
		return tooLarge(r.off, r.max)
	}
	k, err := io.ReadFull(r.br, b)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		if what == "" {
			what = fmt.Sprintf("item[%d] or the tail", r.t.n)
		}
		return formatErr(r.off+int64(k), "", ErrTruncated, "the input ends inside %s (%d of its %d bytes)", what, k, len(b))
	}
	if err != nil {
		return fmt.Errorf("caindex: reading at offset %d: %w", r.off+int64(k), err)
	}
	r.off += int64(len(b))
	return nil
}

// Parse reads a whole index of at most maxSize bytes (<= 0 means
// DefaultMaxSize) and checks it as Reader does.
func Parse(r io.Reader, maxSize int64) (*Index, error) {
	rd := NewReader(r, maxSize)
	h, err := rd.Header()
	if err != nil {
		return nil, err
	}
	x := &Index{Header: h}
	for {
		e, err := rd.Next()
		if err == io.EOF {
			return x, nil
		}
		if err != nil {
			return nil, err
		}
		x.Chunks = append(x.Chunks, e)
	}
}

// Parser checks an index pushed to it in pieces of any size (as casync's
// INDEX frames arrive), calling a function for each chunk as soon as its
// item is complete. It is an io.Writer: tee the frames to storage and to
// the Parser, and Close it at INDEX_EOF.
type Parser struct {
	max     int64
	off     int64 // bytes accepted
	head    bool
	hdr     Header
	t       table
	done    bool // tail seen
	pend    [HeaderSize + TableHeaderSize]byte
	npend   int
	onEntry func(Entry) error
	err     error
}

// NewParser returns a Parser that refuses an index larger than maxSize
// bytes (<= 0 means DefaultMaxSize) and calls onEntry, if not nil, for
// every chunk in order. An error from onEntry stops the Parser and is
// returned by Write.
func NewParser(maxSize int64, onEntry func(Entry) error) *Parser {
	return &Parser{max: maxSizeOrDefault(maxSize), onEntry: onEntry}
}

// Write checks the next piece of the index. It returns the number of bytes
// accepted and the first error, which is sticky.
func (p *Parser) Write(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	n := 0
	for len(b) > 0 {
		if p.done {
			p.err = formatErr(p.off, "", ErrMalformed, "data follows the table's tail")
			return n, p.err
		}
		need := ItemSize
		if !p.head {
			need = HeaderSize + TableHeaderSize
		}
		if p.npend == 0 && p.off+int64(need) > p.max {
			p.err = tooLarge(p.off, p.max)
			return n, p.err
		}
		k := copy(p.pend[p.npend:need], b)
		p.npend += k
		p.off += int64(k)
		n += k
		b = b[k:]
		if p.npend < need {
			break
		}
		p.npend = 0
		start := p.off - int64(need)
		if !p.head {
			h, fe := parseHead(p.pend[:need])
			if fe != nil {
				p.err = fe
				return n, fe
			}
			p.hdr, p.head, p.t.max = h, true, h.ChunkSizeMax
			continue
		}
		e, tail, fe := p.t.record(p.pend[:need], start)
		if fe != nil {
			p.err = fe
			return n, fe
		}
		if tail {
			p.done = true
			continue
		}
		if p.onEntry != nil {
			if err := p.onEntry(e); err != nil {
				p.err = err
				return n, err
			}
		}
	}
	return n, nil
}

// Close reports whether what was written is a whole index: nil if the
// tail was the last thing written, else a *FormatError (ErrTruncated for
// an index that stops early) or the error Write returned.
func (p *Parser) Close() error {
	if p.err != nil {
		return p.err
	}
	if !p.done {
		what, need := fmt.Sprintf("item[%d] or the tail", p.t.n), ItemSize
		if !p.head {
			what, need = "the header", HeaderSize+TableHeaderSize
		}
		p.err = formatErr(p.off, "", ErrTruncated, "the input ends inside %s (%d of its %d bytes)", what, p.npend, need)
		return p.err
	}
	return nil
}

// Header returns the header once its bytes have been written and checked.
func (p *Parser) Header() (Header, bool) { return p.hdr, p.head }

// Chunks returns the number of chunks seen so far.
func (p *Parser) Chunks() int64 { return p.t.n }

// Size returns the stream length the chunks so far cover.
func (p *Parser) Size() uint64 { return p.t.prevEnd }

// Done reports whether the tail has been seen.
func (p *Parser) Done() bool { return p.done }

// Scan reads a whole index from r as it arrives: onHeader (if not nil)
// once the header is checked, then onEntry for each entry in table order,
// until the tail is checked. It returns the Reader for Chunks, Size and
// Offset. An error from a callback is returned as it is; a malformed index
// is a *FormatError.
func Scan(r io.Reader, maxSize int64, onHeader func(Header) error, onEntry func(Entry) error) (*Reader, error) {
	rd := NewReader(r, maxSize)
	h, err := rd.Header()
	if err != nil {
		return rd, err
	}
	if onHeader != nil {
		if err := onHeader(h); err != nil {
			return rd, err
		}
	}
	for {
		e, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return rd, nil
		}
		if err != nil {
			return rd, err
		}
		if err := onEntry(e); err != nil {
			return rd, err
		}
	}
}
