package pmxproto

import (
	"fmt"
	"io"
)

const (
	// flushThreshold: buffered bytes beyond which WritePacket flushes.
	flushThreshold = 64 << 10
	// directPayload: chunk data at least this long is written straight
	// from the packet instead of being copied into the buffer.
	directPayload = 32 << 10
)

// payloader is a packet whose tail (chunk data) can be written without
// being copied: encodeHead writes everything before it, with the full
// length in the header.
type payloader interface {
	encodeHead(dst []byte) []byte
	payload() []byte
}

// Writer buffers encoded packets for an io.Writer. Packets reach the
// underlying writer when the buffer fills or on Flush; call Flush after each
// batch of replies. It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	buf []byte
	err error // sticky write error
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, flushThreshold+HeaderSize+8+DigestSize)}
}

// WritePacket validates p and buffers its encoding. An invalid packet is
// refused with its *BodyError and nothing is written; the Writer stays
// usable. A write error is returned from this and every later call.
func (w *Writer) WritePacket(p Packet) error {
	if w.err != nil {
		return w.err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if pl, ok := p.(payloader); ok && len(pl.payload()) >= directPayload {
		// Large chunk data: header into the buffer, flush, then the data
		// itself, so the buffer never grows to a chunk's size.
		w.buf = pl.encodeHead(w.buf)
		if err := w.Flush(); err != nil {
			return err
		}
		return w.write(pl.payload())
	}
	w.buf = p.Encode(w.buf)
	if len(w.buf) >= flushThreshold {
		return w.Flush()
	}
	return nil
}

// Flush writes the buffered packets to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) == 0 {
		return nil
	}
	err := w.write(w.buf)
	w.buf = w.buf[:0]
	return err
}

// Buffered returns the number of bytes waiting for Flush.
func (w *Writer) Buffered() int { return len(w.buf) }

func (w *Writer) write(b []byte) error {
	n, err := w.w.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("pmx wire: writing %d bytes (wrote %d): %w", len(b), n, err)
	}
	return w.err
}
