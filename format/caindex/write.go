package caindex

import (
	"encoding/binary"
	"fmt"
	"io"
)

// flushAt is how much a Writer buffers before writing.
const flushAt = 64 << 10

// Writer writes an index as casync does: header, then one item per Add,
// then the tail on Close. Its output is byte-identical to casync's for the
// same header and chunks.
type Writer struct {
	w      io.Writer
	buf    []byte
	t      table
	err    error // sticky write error
	closed bool
}

// NewWriter checks h and returns a Writer that writes an index with it to
// w. Nothing is written before the first Add or Close.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	return &Writer{w: w, buf: appendHead(make([]byte, 0, flushAt+ItemSize), h), t: table{max: h.ChunkSizeMax}}, nil
}

// Add appends the next chunk: size bytes, named id. A size of 0 or above
// the header's ChunkSizeMax is refused with a *FormatError (nothing is
// written, and the Writer stays usable): casync's reader would refuse the
// index.
func (w *Writer) Add(id [IDSize]byte, size uint64) error {
	if err := w.usable(); err != nil {
		return err
	}
	if size == 0 || size > w.t.max {
		return formatErr(-1, fmt.Sprintf("item[%d]", w.t.n), ErrMalformed, "chunk size %d is outside [1, chunk_size_max %d]", size, w.t.max)
	}
	end := w.t.prevEnd + size
	if end < w.t.prevEnd {
		return formatErr(-1, fmt.Sprintf("item[%d]", w.t.n), ErrMalformed, "end offset overflows: %d + %d", w.t.prevEnd, size)
	}
	w.buf = binary.LittleEndian.AppendUint64(w.buf, end)
	w.buf = append(w.buf, id[:]...)
	w.t.prevEnd, w.t.n = end, w.t.n+1
	if len(w.buf) >= flushAt {
		return w.flush()
	}
	return nil
}

// Close writes the tail and flushes. It does not close the underlying
// writer. A second Close does nothing.
func (w *Writer) Close() error {
	if w.closed && w.err == nil {
		return nil
	}
	if err := w.usable(); err != nil {
		return err
	}
	w.buf = appendTail(w.buf, w.t.n)
	w.closed = true
	return w.flush()
}

// Chunks returns the number of chunks added.
func (w *Writer) Chunks() int64 { return w.t.n }

// Size returns the stream length the chunks so far cover.
func (w *Writer) Size() uint64 { return w.t.prevEnd }

func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("caindex: Writer used after Close")
	}
	return nil
}

func (w *Writer) flush() error {
	if _, err := w.w.Write(w.buf); err != nil {
		w.err = fmt.Errorf("caindex: writing index: %w", err)
		return w.err
	}
	w.buf = w.buf[:0]
	return nil
}

// CheckEntries reports whether entries can be written under h: contiguous
// from 0 (each Start is the previous End), none empty, none larger than
// h.ChunkSizeMax.
func CheckEntries(h Header, entries []Entry) error {
	var prev uint64
	for i, e := range entries {
		field := fmt.Sprintf("entry[%d]", i)
		switch {
		case e.Start != prev:
			return formatErr(-1, field, ErrMalformed, "starts at %d, want %d (the previous end)", e.Start, prev)
		case e.End <= e.Start:
			return formatErr(-1, field, ErrMalformed, "range [%d, %d) is empty", e.Start, e.End)
		case e.End-e.Start > h.ChunkSizeMax:
			return formatErr(-1, field, ErrMalformed, "%d bytes, more than chunk_size_max %d", e.End-e.Start, h.ChunkSizeMax)
		}
		prev = e.End
	}
	return nil
}

// Write writes a whole index: h, entries and the tail. h and the entries
// are checked before anything is written.
func Write(w io.Writer, h Header, entries []Entry) error {
	if err := h.Validate(); err != nil {
		return err
	}
	if err := CheckEntries(h, entries); err != nil {
		return err
	}
	iw, err := NewWriter(w, h)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := iw.Add(e.ID, e.Size()); err != nil {
			return err
		}
	}
	return iw.Close()
}

// WriteTo writes x as an index file; see Write. It implements io.WriterTo.
func (x *Index) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	err := Write(cw, x.Header, x.Chunks)
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
