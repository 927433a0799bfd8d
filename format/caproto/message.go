package caproto

import (
	"encoding/binary"
	"fmt"
	"math"
	"unicode/utf8"
)

// Message is one caprotocol frame. The concrete types are the pointers
// *Hello, *Index, *IndexEOF, *Archive, *ArchiveEOF, *Request, *Chunk,
// *Missing, *Goodbye and *Abort; no other type implements it.
type Message interface {
	// Type is the frame's message type.
	Type() Type
	// Encode appends the whole frame, header included, to dst. It does not
	// check the message: Validate does, and Writer calls it.
	Encode(dst []byte) []byte

	// frameSize is the encoded size, header included.
	frameSize() int
	// check returns what casync would refuse in the message, or nil.
	check() *FrameError
	// decode fills the message from a frame body whose size has already
	// been checked for the type. Slices may alias body.
	decode(body []byte) *FrameError
}

// Validate reports whether casync would accept m as a frame: the same
// checks ReadMessage applies, with MaxFrameSize as the limit. The error is
// a *FrameError with Offset -1.
func Validate(m Message) error {
	e := m.check()
	if e == nil && m.frameSize() > MaxFrameSize {
		e = &FrameError{Err: ErrFrameTooLarge, Msg: fmt.Sprintf("frame would be %d bytes, above the %d-byte maximum", m.frameSize(), MaxFrameSize)}
	}
	if e == nil {
		return nil
	}
	e.Offset, e.Type, e.Size = -1, m.Type(), uint64(m.frameSize())
	return e
}

func malformed(format string, args ...any) *FrameError {
	return &FrameError{Err: ErrMalformed, Msg: fmt.Sprintf(format, args...)}
}

// Hello opens a session; each side sends one, first.
type Hello struct {
	// Features are the services the sender offers and the operations it
	// wants. casync refuses 0, and bits outside AllFeatures.
	Features Features
}

// Type returns TypeHello.
func (*Hello) Type() Type { return TypeHello }

// Encode appends the 24-byte HELLO frame to dst.
func (m *Hello) Encode(dst []byte) []byte {
	dst = appendHeader(dst, m.frameSize(), TypeHello)
	return binary.LittleEndian.AppendUint64(dst, uint64(m.Features))
}

func (*Hello) frameSize() int { return HeaderSize + 8 }

func (m *Hello) check() *FrameError {
	switch {
	case m.Features == 0:
		// casync: "other side doesn't provide anything, and doesn't want anything".
		return malformed("HELLO feature word is 0")
	case m.Features == math.MaxUint64:
		return malformed("HELLO feature word is 0xffffffffffffffff")
	case m.Features&^AllFeatures != 0:
		return &FrameError{Err: ErrUnsupportedFeatures,
			Msg: fmt.Sprintf("HELLO feature word 0x%x has bits 0x%x outside 0x%x", uint64(m.Features), uint64(m.Features&^AllFeatures), uint64(AllFeatures))}
	}
	return nil
}

func (m *Hello) decode(body []byte) *FrameError {
	m.Features = Features(binary.LittleEndian.Uint64(body))
	return m.check()
}

// Index carries the next piece of a .caibx or .caidx file. Pieces need not
// line up with anything in the index.
type Index struct {
	// Data is at least one byte. A decoded Data aliases the Reader's
	// buffer: it is valid until the next ReadMessage.
	Data []byte
}

// Type returns TypeIndex.
func (*Index) Type() Type { return TypeIndex }

// Encode appends the INDEX frame to dst.
func (m *Index) Encode(dst []byte) []byte {
	return append(appendHeader(dst, m.frameSize(), TypeIndex), m.Data...)
}

func (m *Index) frameSize() int              { return HeaderSize + len(m.Data) }
func (m *Index) check() *FrameError          { return checkFileData(len(m.Data)) }
func (m *Index) decode(b []byte) *FrameError { m.Data = b; return nil }

// Archive carries the next piece of a .catar file.
type Archive struct {
	// Data is at least one byte. A decoded Data aliases the Reader's
	// buffer: it is valid until the next ReadMessage.
	Data []byte
}

// Type returns TypeArchive.
func (*Archive) Type() Type { return TypeArchive }

// Encode appends the ARCHIVE frame to dst.
func (m *Archive) Encode(dst []byte) []byte {
	return append(appendHeader(dst, m.frameSize(), TypeArchive), m.Data...)
}

func (m *Archive) frameSize() int              { return HeaderSize + len(m.Data) }
func (m *Archive) check() *FrameError          { return checkFileData(len(m.Data)) }
func (m *Archive) decode(b []byte) *FrameError { m.Data = b; return nil }

func checkFileData(n int) *FrameError {
	if n == 0 {
		return malformed("no data (at least 1 byte needed)")
	}
	return nil
}

// IndexEOF ends the index stream.
type IndexEOF struct{}

// Type returns TypeIndexEOF.
func (*IndexEOF) Type() Type { return TypeIndexEOF }

// Encode appends the 16-byte INDEX_EOF frame to dst.
func (*IndexEOF) Encode(dst []byte) []byte { return appendHeader(dst, HeaderSize, TypeIndexEOF) }

func (*IndexEOF) frameSize() int            { return HeaderSize }
func (*IndexEOF) check() *FrameError        { return nil }
func (*IndexEOF) decode([]byte) *FrameError { return nil }

// ArchiveEOF ends the archive stream.
type ArchiveEOF struct{}

// Type returns TypeArchiveEOF.
func (*ArchiveEOF) Type() Type { return TypeArchiveEOF }

// Encode appends the 16-byte ARCHIVE_EOF frame to dst.
func (*ArchiveEOF) Encode(dst []byte) []byte { return appendHeader(dst, HeaderSize, TypeArchiveEOF) }

func (*ArchiveEOF) frameSize() int            { return HeaderSize }
func (*ArchiveEOF) check() *FrameError        { return nil }
func (*ArchiveEOF) decode([]byte) *FrameError { return nil }

// Goodbye ends a push session successfully (sent by the side that accepts
// the data).
type Goodbye struct{}

// Type returns TypeGoodbye.
func (*Goodbye) Type() Type { return TypeGoodbye }

// Encode appends the 16-byte GOODBYE frame to dst.
func (*Goodbye) Encode(dst []byte) []byte { return appendHeader(dst, HeaderSize, TypeGoodbye) }

func (*Goodbye) frameSize() int            { return HeaderSize }
func (*Goodbye) check() *FrameError        { return nil }
func (*Goodbye) decode([]byte) *FrameError { return nil }

// Request asks the peer for chunks, all at one priority.
type Request struct {
	// Flags is 0 or RequestHighPriority.
	Flags RequestFlags
	// IDs are the chunks wanted, at least one. A decoded Request's IDs
	// slice is reused by the next ReadMessage.
	IDs [][IDSize]byte
}

// Type returns TypeRequest.
func (*Request) Type() Type { return TypeRequest }

// HighPriority reports whether the request has RequestHighPriority.
func (m *Request) HighPriority() bool { return m.Flags&RequestHighPriority != 0 }

// Encode appends the REQUEST frame to dst.
func (m *Request) Encode(dst []byte) []byte {
	dst = appendHeader(dst, m.frameSize(), TypeRequest)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Flags))
	for i := range m.IDs {
		dst = append(dst, m.IDs[i][:]...)
	}
	return dst
}

func (m *Request) frameSize() int { return HeaderSize + 8 + IDSize*len(m.IDs) }

func (m *Request) check() *FrameError {
	if m.Flags&^RequestHighPriority != 0 {
		return malformed("REQUEST flags 0x%x: only 0x1 (HIGH_PRIORITY) is defined", uint64(m.Flags))
	}
	if len(m.IDs) == 0 {
		return malformed("REQUEST without chunk ids")
	}
	return nil
}

func (m *Request) decode(body []byte) *FrameError {
	m.Flags = RequestFlags(binary.LittleEndian.Uint64(body))
	ids := body[8:]
	m.IDs = m.IDs[:0]
	for len(ids) >= IDSize {
		m.IDs = append(m.IDs, [IDSize]byte(ids[:IDSize]))
		ids = ids[IDSize:]
	}
	return m.check()
}

// Chunk carries one chunk's data, compressed or raw.
type Chunk struct {
	// Flags is 0 (raw data) or ChunkCompressed.
	Flags ChunkFlags
	// ID is the chunk id: the digest of the uncompressed data.
	ID [IDSize]byte
	// Data is at least one byte. A decoded Data aliases the Reader's
	// buffer: it is valid until the next ReadMessage.
	Data []byte
}

// Type returns TypeChunk.
func (*Chunk) Type() Type { return TypeChunk }

// Compressed reports whether the chunk has ChunkCompressed.
func (m *Chunk) Compressed() bool { return m.Flags&ChunkCompressed != 0 }

// Encode appends the CHUNK frame to dst.
func (m *Chunk) Encode(dst []byte) []byte {
	return append(m.EncodeHead(dst), m.Data...)
}

// EncodeHead appends everything of the CHUNK frame before Data to dst:
// the frame is that, then Data, so a writer can send Data without copying
// it into a frame.
func (m *Chunk) EncodeHead(dst []byte) []byte {
	dst = appendHeader(dst, m.frameSize(), TypeChunk)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Flags))
	return append(dst, m.ID[:]...)
}

func (m *Chunk) frameSize() int { return HeaderSize + 8 + IDSize + len(m.Data) }

func (m *Chunk) check() *FrameError {
	if m.Flags&^ChunkCompressed != 0 {
		return malformed("CHUNK flags 0x%x: only 0x1 (COMPRESSED) is defined", uint64(m.Flags))
	}
	if len(m.Data) == 0 {
		return malformed("CHUNK without data (at least 1 byte needed)")
	}
	return nil
}

func (m *Chunk) decode(body []byte) *FrameError {
	m.Flags = ChunkFlags(binary.LittleEndian.Uint64(body))
	m.ID = [IDSize]byte(body[8 : 8+IDSize])
	m.Data = body[8+IDSize:]
	return m.check()
}

// Missing answers a request for a chunk the sender does not have.
type Missing struct {
	// ID is the chunk that is missing.
	ID [IDSize]byte
}

// Type returns TypeMissing.
func (*Missing) Type() Type { return TypeMissing }

// Encode appends the 48-byte MISSING frame to dst.
func (m *Missing) Encode(dst []byte) []byte {
	return append(appendHeader(dst, m.frameSize(), TypeMissing), m.ID[:]...)
}

func (*Missing) frameSize() int     { return HeaderSize + IDSize }
func (*Missing) check() *FrameError { return nil }
func (m *Missing) decode(body []byte) *FrameError {
	m.ID = [IDSize]byte(body)
	return nil
}

// MaxAbortErrno is one above the largest errno casync accepts in an ABORT
// (it refuses error >= INT32_MAX).
const MaxAbortErrno = math.MaxInt32

// Abort ends the session with an error.
type Abort struct {
	// Errno is the closest errno, below MaxAbortErrno, or 0 (which the
	// peer reports as ECONNABORTED).
	Errno uint32
	// Reason is one line of text: casync refuses any byte below 0x20
	// (so no newline, tab or NUL). The frame adds the terminating NUL.
	// NewAbort makes any text fit.
	Reason string
}

// NewAbort returns an ABORT that casync will accept whatever the input:
// bytes below 0x20 in reason become spaces, reason is cut (on a UTF-8
// boundary) to fit one frame, and an errno of MaxAbortErrno or more becomes
// 0.
func NewAbort(errno uint32, reason string) *Abort {
	if errno >= MaxAbortErrno {
		errno = 0
	}
	if max := MaxFrameSize - HeaderSize - 8 - 1; len(reason) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	b := []byte(reason)
	for i, c := range b {
		if c < 0x20 {
			b[i] = ' '
		}
	}
	return &Abort{Errno: errno, Reason: string(b)}
}

// Type returns TypeAbort.
func (*Abort) Type() Type { return TypeAbort }

// Encode appends the ABORT frame, with the reason's terminating NUL, to dst.
func (m *Abort) Encode(dst []byte) []byte {
	dst = appendHeader(dst, m.frameSize(), TypeAbort)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Errno))
	dst = append(dst, m.Reason...)
	return append(dst, 0)
}

func (m *Abort) frameSize() int { return HeaderSize + 8 + len(m.Reason) + 1 }

func (m *Abort) check() *FrameError {
	if m.Errno >= MaxAbortErrno {
		return malformed("ABORT errno %d is not below %d", m.Errno, MaxAbortErrno)
	}
	return checkReason(m.Reason)
}

func checkReason[T string | []byte](s T) *FrameError {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 {
			return malformed("ABORT reason byte %d is 0x%02x: bytes below 0x20 are not allowed", i, s[i])
		}
	}
	return nil
}

func (m *Abort) decode(body []byte) *FrameError {
	errno := binary.LittleEndian.Uint64(body)
	if errno >= MaxAbortErrno {
		return malformed("ABORT errno %d is not below %d", errno, MaxAbortErrno)
	}
	text := body[8:]
	if last := text[len(text)-1]; last != 0 {
		return malformed("ABORT reason does not end in NUL (last byte 0x%02x)", last)
	}
	if e := checkReason(text[:len(text)-1]); e != nil {
		return e
	}
	m.Errno = uint32(errno)
	m.Reason = string(text[:len(text)-1])
	return nil
}
