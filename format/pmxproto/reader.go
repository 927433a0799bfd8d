package pmxproto

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// readBufferSize is the Reader's read-ahead: enough to take many small
// packets per read; bufio passes larger body reads straight through.
const readBufferSize = 64 << 10

// readBuffers hold the read-ahead of Readers that are between bursts: a
// Reader takes one when a packet's header has arrived and gives it back
// once it has consumed everything buffered, so a Reader waiting for its
// next packet (an idle connection) holds no buffer.
var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufferSize) }}

// sizeRule is what a packet type's body length must satisfy, checked from
// the header alone, before the body is allocated.
type sizeRule struct {
	min, max int
	unit     int    // if > 0, (length - min) % unit == 0
	what     string // the body's shape, for error messages
}

var sizeRules = [...]sizeRule{
	TypeHello:             {12, 12, 0, "magic and version"},
	TypeOk:                {0, 0, 0, "empty"},
	TypeError:             {1, MaxBodySize, 0, "error id and optional reason"},
	TypeGetHashList:       {2, 2 + 0xffff, 0, "name_length and name"},
	TypeHashListPart:      {0, MaxBodySize, DigestSize, "32-byte digests"},
	TypeDownloadChunks:    {DigestSize, MaxBodySize, DigestSize, "one or more 32-byte digests"},
	TypeChunk:             {8 + DigestSize + 1, MaxBodySize, 0, "offset, digest and at least 1 data byte"},
	TypeUploadChunk:       {DigestSize + 1, MaxBodySize, 0, "digest and at least 1 data byte"},
	TypeCreateBackup:      {createBackupFixed, createBackupFixed + 2*0xff, 0, "24-byte fixed part, id and name"},
	TypeBackupCreated:     {2, 2 + 0xffff, 0, "path_length and path"},
	TypeBackupDataFixed:   {entrySize, MaxBodySize, entrySize, "one or more 40-byte index+digest records"},
	TypeBackupDataDynamic: {entrySize, MaxBodySize, entrySize, "one or more 40-byte offset+digest records"},
	TypeBackupFinished:    {0, 0, 0, "empty"},
}

var decoders = [...]func(id uint8, body []byte) (Packet, *BodyError){
	TypeHello:       decodeHello,
	TypeOk:          func(id uint8, _ []byte) (Packet, *BodyError) { return &Ok{ID: id}, nil },
	TypeError:       decodeError,
	TypeGetHashList: decodeGetHashList,
	TypeHashListPart: func(id uint8, b []byte) (Packet, *BodyError) {
		return &HashListPart{ID: id, Digests: decodeDigests(b)}, nil
	},
	TypeDownloadChunks: func(id uint8, b []byte) (Packet, *BodyError) {
		return &DownloadChunks{ID: id, Digests: decodeDigests(b)}, nil
	},
	TypeChunk:             decodeChunk,
	TypeUploadChunk:       decodeUploadChunk,
	TypeCreateBackup:      decodeCreateBackup,
	TypeBackupCreated:     decodeBackupCreated,
	TypeBackupDataFixed:   decodeBackupDataFixed,
	TypeBackupDataDynamic: decodeBackupDataDynamic,
	TypeBackupFinished:    func(id uint8, _ []byte) (Packet, *BodyError) { return &BackupFinished{ID: id}, nil },
}

// Reader decodes packets from a byte stream. It reads ahead, so it must be
// the only reader of the stream. It is not safe for concurrent use.
type Reader struct {
	src io.Reader
	r   *bufio.Reader // the read-ahead; nil while nothing is buffered
	own bool          // r is the caller's bufio.Reader, kept for good
	max uint32
	// refused are the packet types whose bodies are skipped unread and
	// answered with a *BodyError (SetRefused).
	refused [maxType + 1]bool
	off     int64 // stream offset of the next packet
	hdr     [HeaderSize]byte
	err     error // sticky *FrameError or io.EOF
	// prefix holds the fields before a chunk's data, which is read into
	// a buffer of its own so that Release can hand it back whole.
	prefix [8 + DigestSize]byte
	// free holds released chunk buffers (see Release); a channel so that
	// Release may be called from another goroutine.
	free chan []byte
}

// freeBuffers is how many released chunk buffers a Reader keeps: one
// being filled while others are still in use is the common case.
const freeBuffers = 2

// NewReader returns a Reader of r with the limit MaxPacketSize.
// The read-ahead buffer is taken from a pool when a packet's header has
// arrived and returned once it is empty; r itself is used if it is a
// *bufio.Reader of at least 64 KiB.
func NewReader(r io.Reader) *Reader {
	if br, ok := r.(*bufio.Reader); ok && br.Size() >= readBufferSize {
		return &Reader{src: r, r: br, own: true, max: MaxPacketSize, free: make(chan []byte, freeBuffers)}
	}
	return &Reader{src: r, max: MaxPacketSize, free: make(chan []byte, freeBuffers)}
}

// buffered is the read-ahead, taken from the pool if the Reader has none.
func (r *Reader) buffered() *bufio.Reader {
	if r.r == nil {
		r.r = readBuffers.Get().(*bufio.Reader)
		r.r.Reset(r.src)
	}
	return r.r
}

// release gives the read-ahead back to the pool once nothing is buffered.
func (r *Reader) release() {
	if r.r != nil && !r.own && r.r.Buffered() == 0 {
		r.r.Reset(nil)
		readBuffers.Put(r.r)
		r.r = nil
	}
}

// Release hands the data buffer of a decoded Chunk or UploadChunk back to
// the Reader, which fills it again for a later chunk instead of allocating
// (and zeroing) a new one, up to 16 MiB per packet. After Release the
// packet's Data must not be used; a caller that passed it to gRPC may
// release it once SendMsg returns, as the proto codec has copied it by
// then. Releasing is optional, safe from any goroutine, and a no-op for
// other packets.
func (r *Reader) Release(p Packet) {
	var data []byte
	switch p := p.(type) {
	case *Chunk:
		data, p.Data = p.Data, nil
	case *UploadChunk:
		data, p.Data = p.Data, nil
	}
	if cap(data) < 64<<10 {
		return // small buffers cost less to allocate than to keep
	}
	select {
	case r.free <- data[:0]:
	default:
	}
}

// buffer returns n bytes to read a chunk's data into: a released buffer
// if one is large enough (its old contents are overwritten in full before
// the packet is returned), else a new one.
func (r *Reader) buffer(n int) []byte {
	for range freeBuffers {
		select {
		case b := <-r.free:
			if cap(b) >= n {
				return b[:n]
			}
		default:
			return make([]byte, n)
		}
	}
	return make([]byte, n)
}

// SetMaxPacketSize lowers the largest packet, header included, that the
// Reader accepts; a longer one is a framing error. Values are clamped to
// HeaderSize..MaxPacketSize.
func (r *Reader) SetMaxPacketSize(n int) {
	r.max = uint32(min(max(n, HeaderSize), MaxPacketSize))
}

// SetRefused makes the Reader refuse packets of the types ts: their
// bodies are skipped without being allocated, and ReadPacket returns a
// *BodyError for each. A server refuses what only a server sends (Hello,
// Ok, Error, HashListPart, Chunk, BackupCreated), so a client cannot make
// it allocate a 16 MiB body it would then throw away.
func (r *Reader) SetRefused(ts ...Type) {
	for _, t := range ts {
		if t <= maxType {
			r.refused[t] = true
		}
	}
}

// ReadPacket reads and decodes the next packet.
//
// At a clean end of stream between packets it returns io.EOF. If the stream
// cannot be framed it returns a *FrameError, and the same error from then
// on. If only the body is bad it returns a *BodyError; the packet has been
// consumed and the next call reads the next packet. Every length is checked
// before anything is allocated: a body is allocated only once its header
// passed the packet limit and its type's size rule.
//
// A decoded packet owns all its memory, including Data and Digests.
func (r *Reader) ReadPacket() (Packet, error) {
	if r.err != nil {
		return nil, r.err
	}
	defer r.release()
	start := r.off
	// With nothing buffered, the header is read straight from the stream:
	// waiting for it holds no buffer.
	var hr io.Reader = r.src
	if r.r != nil {
		hr = r.r
	}
	n, err := io.ReadFull(hr, r.hdr[:])
	r.off += int64(n)
	if err != nil {
		if err == io.EOF {
			r.err = io.EOF
			return nil, io.EOF
		}
		return nil, r.fail(&FrameError{Offset: start, Reason: fmt.Sprintf("stream ended or failed %d bytes into a packet header", n), Err: err})
	}
	id, t, length := r.hdr[0], Type(r.hdr[1]), binary.LittleEndian.Uint32(r.hdr[2:])
	fe := func(reason string, err error) error {
		return r.fail(&FrameError{Offset: start, ID: id, Type: t, Length: length, HaveHeader: true, Reason: reason, Err: err})
	}
	switch {
	case length < HeaderSize:
		return nil, fe(fmt.Sprintf("length %d is less than the %d-byte header it includes", length, HeaderSize), nil)
	case length > r.max:
		return nil, fe(fmt.Sprintf("length %d exceeds the %d-byte packet limit", length, r.max), nil)
	case t > maxType:
		return nil, fe(fmt.Sprintf("unknown packet type %d (known: 0..%d)", uint8(t), uint8(maxType)), nil)
	}
	size := int(length) - HeaderSize

	e := sizeRules[t].check(id, t, size)
	if e == nil && r.refused[t] {
		e = bodyErr(id, t, "type", 0, "a %s packet is not accepted here", t)
	}
	if e != nil {
		// The header is sound, so skip the body without allocating it and
		// stay in sync.
		m, err := r.buffered().Discard(size)
		r.off += int64(m)
		if err != nil {
			return nil, fe(fmt.Sprintf("stream ended or failed %d bytes into a %d-byte body", m, size), unexpected(err))
		}
		return nil, e
	}

	if t == TypeChunk || t == TypeUploadChunk {
		// The fixed fields, then the data into a buffer of its own.
		prefix := r.prefix[:DigestSize]
		if t == TypeChunk {
			prefix = r.prefix[:8+DigestSize]
		}
		br := r.buffered()
		m, err := io.ReadFull(br, prefix)
		r.off += int64(m)
		if err == nil {
			data := r.buffer(size - len(prefix))
			m, err = io.ReadFull(br, data)
			r.off += int64(m)
			m += len(prefix)
			if err == nil {
				if t == TypeChunk {
					p := &Chunk{ID: id, Offset: binary.LittleEndian.Uint64(prefix), Data: data}
					copy(p.Digest[:], prefix[8:])
					return p, nil
				}
				p := &UploadChunk{ID: id, Data: data}
				copy(p.Digest[:], prefix)
				return p, nil
			}
		}
		return nil, fe(fmt.Sprintf("stream ended or failed %d bytes into a %d-byte body", m, size), unexpected(err))
	}

	body := make([]byte, size)
	var br io.Reader = r.r // nil only if size is 0: nothing to read
	if size > 0 {
		br = r.buffered()
	}
	m, err := io.ReadFull(br, body)
	r.off += int64(m)
	if err != nil {
		return nil, fe(fmt.Sprintf("stream ended or failed %d bytes into a %d-byte body", m, size), unexpected(err))
	}
	p, e := decoders[t](id, body)
	if e != nil {
		return nil, e
	}
	return p, nil
}

// Offset returns the stream offset of the next packet: the number of bytes
// consumed so far.
func (r *Reader) Offset() int64 { return r.off }

func (r *Reader) fail(e *FrameError) error {
	r.err = e
	return e
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (s sizeRule) check(id uint8, t Type, n int) *BodyError {
	switch {
	case s.min == s.max && n != s.min:
		return bodyErr(id, t, "body", 0, "%d bytes, want exactly %d (%s)", n, s.min, s.what)
	case n < s.min:
		return bodyErr(id, t, "body", 0, "%d bytes, want at least %d (%s)", n, s.min, s.what)
	case n > s.max:
		return bodyErr(id, t, "body", 0, "%d bytes, want at most %d (%s)", n, s.max, s.what)
	case s.unit > 0 && (n-s.min)%s.unit != 0:
		return bodyErr(id, t, "body", 0, "%d bytes, not a whole number of records (%s)", n, s.what)
	}
	return nil
}
