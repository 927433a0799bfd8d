package caproto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// readBufferSize is the read-ahead of a Reader: casync itself reads at
// least 1 MiB at a time, but 64 KiB keeps idle connections cheap.
const readBufferSize = 64 << 10

// Reader decodes frames from a stream.
type Reader struct {
	br  *bufio.Reader
	max int
	off int64 // stream offset of the next frame
	err error // sticky: the stream is unusable after any error
	hdr [HeaderSize]byte
	buf []byte

	// One of each message, reused (as pgproto3 does): what ReadMessage
	// returns is valid until the next call.
	hello      Hello
	index      Index
	indexEOF   IndexEOF
	archive    Archive
	archiveEOF ArchiveEOF
	request    Request
	chunk      Chunk
	missing    Missing
	goodbye    Goodbye
	abort      Abort
}

// NewReader returns a Reader that refuses frames larger than maxFrame
// bytes, header included. maxFrame <= 0, or above MaxFrameSize, means
// MaxFrameSize: casync never sends larger frames. The Reader buffers, so
// r must not be read by anything else afterwards.
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 || maxFrame > MaxFrameSize {
		maxFrame = MaxFrameSize
	}
	return &Reader{br: bufio.NewReaderSize(r, readBufferSize), max: maxFrame}
}

// Offset returns the stream offset of the next frame: the number of bytes
// of whole frames read so far.
func (r *Reader) Offset() int64 { return r.off }

// ReadMessage reads and checks the next frame. At a clean end of stream
// (between frames) it returns io.EOF; a stream that ends inside a frame
// gives a *FrameError wrapping io.ErrUnexpectedEOF; a frame casync would
// refuse gives a *FrameError wrapping ErrMalformed, ErrFrameTooLarge,
// ErrUnknownType or ErrUnsupportedFeatures. After any error the Reader
// returns that error again.
//
// The returned message, and any slice in it, belongs to the Reader and is
// valid only until the next call: copy what must be kept.
func (r *Reader) ReadMessage() (Message, error) {
	if r.err != nil {
		return nil, r.err
	}
	m, err := r.readMessage()
	if err != nil {
		r.err = err
		return nil, err
	}
	return m, nil
}

func (r *Reader) readMessage() (Message, error) {
	start := r.off
	n, err := io.ReadFull(r.br, r.hdr[:])
	if err == io.EOF {
		return nil, io.EOF
	}
	if err == io.ErrUnexpectedEOF {
		return nil, &FrameError{Offset: start, Err: io.ErrUnexpectedEOF,
			Msg: fmt.Sprintf("stream ends after %d of the %d header bytes", n, HeaderSize)}
	}
	if err != nil {
		return nil, fmt.Errorf("caproto: reading frame header at offset %d: %w", start, err)
	}
	size := binary.LittleEndian.Uint64(r.hdr[0:8])
	typ := Type(binary.LittleEndian.Uint64(r.hdr[8:16]))
	fail := func(e *FrameError) error {
		e.Offset, e.Type, e.Size = start, typ, size
		return e
	}

	// Everything about the size is checked before the body is read, so a
	// lying header costs no memory.
	if size < HeaderSize {
		return nil, fail(malformed("size %d is smaller than the %d-byte header", size, HeaderSize))
	}
	if size > uint64(r.max) {
		return nil, fail(&FrameError{Err: ErrFrameTooLarge, Msg: fmt.Sprintf("size %d is above the %d-byte limit", size, r.max)})
	}
	m := r.message(typ)
	if m == nil {
		return nil, fail(&FrameError{Err: ErrUnknownType, Msg: fmt.Sprintf("unknown message type 0x%016x", uint64(typ))})
	}
	if e := checkSize(typ, size); e != nil {
		return nil, fail(e)
	}

	body, err := r.readBody(int(size) - HeaderSize)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fail(&FrameError{Err: io.ErrUnexpectedEOF,
				Msg: fmt.Sprintf("stream ends inside the frame: got %d of %d body bytes", len(body), size-HeaderSize)})
		}
		return nil, fmt.Errorf("caproto: reading %s frame body at offset %d: %w", typ, start, err)
	}
	r.off += int64(size)
	if e := m.decode(body); e != nil {
		return nil, fail(e)
	}
	return m, nil
}

func (r *Reader) message(t Type) Message {
	switch t {
	case TypeHello:
		return &r.hello
	case TypeIndex:
		return &r.index
	case TypeIndexEOF:
		return &r.indexEOF
	case TypeArchive:
		return &r.archive
	case TypeArchiveEOF:
		return &r.archiveEOF
	case TypeRequest:
		return &r.request
	case TypeChunk:
		return &r.chunk
	case TypeMissing:
		return &r.missing
	case TypeGoodbye:
		return &r.goodbye
	case TypeAbort:
		return &r.abort
	}
	return nil
}

// checkSize applies casync's size rule for each type (§1.3).
func checkSize(t Type, size uint64) *FrameError {
	exact := func(want uint64) *FrameError {
		if size != want {
			return malformed("%s frames are exactly %d bytes", t, want)
		}
		return nil
	}
	atLeast := func(want uint64) *FrameError {
		if size < want {
			return malformed("%s frames are at least %d bytes", t, want)
		}
		return nil
	}
	switch t {
	case TypeHello:
		return exact(HeaderSize + 8)
	case TypeIndex, TypeArchive:
		return atLeast(HeaderSize + 1)
	case TypeIndexEOF, TypeArchiveEOF, TypeGoodbye:
		return exact(HeaderSize)
	case TypeRequest:
		if e := atLeast(HeaderSize + 8 + IDSize); e != nil {
			return e
		}
		if rest := (size - HeaderSize - 8) % IDSize; rest != 0 {
			return malformed("REQUEST ids take %d bytes, not a multiple of %d (%d left over)", size-HeaderSize-8, IDSize, rest)
		}
	case TypeChunk:
		return atLeast(HeaderSize + 8 + IDSize + 1)
	case TypeMissing:
		return exact(HeaderSize + IDSize)
	case TypeAbort:
		return atLeast(HeaderSize + 8 + 1)
	}
	return nil
}

// readBody reads n bytes into the reused buffer. A buffer too small grows
// as the bytes arrive, not to n at once: a peer that announces 16 MiB and
// sends nothing holds no 16 MiB. On error the bytes read so far are
// returned.
func (r *Reader) readBody(n int) ([]byte, error) {
	if cap(r.buf) >= n {
		b := r.buf[:n]
		k, err := io.ReadFull(r.br, b)
		return b[:k], err
	}
	b := r.buf[:0]
	for len(b) < n {
		want := min(n, max(2*cap(b), readBufferSize))
		if cap(b) < want {
			nb := make([]byte, len(b), want)
			copy(nb, b)
			b = nb
		}
		k, err := io.ReadFull(r.br, b[len(b):want])
		b = b[:len(b)+k]
		if err != nil {
			r.buf = b[:0]
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return b, err
		}
	}
	r.buf = b
	return b, nil
}
