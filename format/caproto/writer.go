package caproto

import "io"

// flushThreshold is how much a Writer buffers before it writes by itself.
const flushThreshold = 64 << 10

// Writer buffers encoded frames and writes them to a stream.
type Writer struct {
	w   io.Writer
	buf []byte
	err error
}

// NewWriter returns a Writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteMessage checks m with Validate and appends its frame to the buffer,
// writing the buffer out once it holds 64 KiB or more. A message casync
// would refuse is not written and its *FrameError is returned; the Writer
// stays usable. Call Flush to send what is buffered.
func (w *Writer) WriteMessage(m Message) error {
	if w.err != nil {
		return w.err
	}
	if err := Validate(m); err != nil {
		return err
	}
	w.buf = m.Encode(w.buf)
	if len(w.buf) >= flushThreshold {
		return w.Flush()
	}
	return nil
}

// Buffered returns the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return len(w.buf) }

// Flush writes the buffered frames. After a write error every call returns
// that error.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	if err != nil {
		w.err = err
		return err
	}
	if cap(w.buf) > 4*flushThreshold {
		w.buf = nil // do not hold on to the buffer of one large CHUNK
	} else {
		w.buf = w.buf[:0]
	}
	return nil
}
