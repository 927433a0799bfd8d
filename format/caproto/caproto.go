// Package caproto encodes and decodes the frames of casync's remote
// protocol ("caprotocol"): a stream of little-endian frames, each a 16-byte
// header (total size, type) followed by a type-specific body.
//
// The package is a pure codec in the style of pgx's pgproto3: it works on
// io.Reader, io.Writer and []byte, knows nothing of sockets or sessions,
// checks every size against a limit before allocating, and applies on
// receipt exactly the per-frame checks a casync peer applies
// (reference/casync-protocol.md §1.3), so that a frame this package accepts
// is one casync would accept, and a frame it writes is one casync will take.
//
// Which message is legal when (HELLO first, INDEX only after PULL_INDEX, …)
// is the session's business, not the codec's; CheckHandshake implements the
// HELLO compatibility rules of §1.4 for the session to call.
package caproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Frame geometry, in bytes.
const (
	// HeaderSize is the size of every frame header: le64 size, le64 type.
	HeaderSize = 16
	// MaxFrameSize is the largest frame casync sends or accepts, header
	// included (CA_PROTOCOL_SIZE_MAX).
	MaxFrameSize = 16 << 20
	// IDSize is the size of a chunk id.
	IDSize = 32
	// MaxChunkData is the largest CHUNK payload that fits in a frame.
	MaxChunkData = MaxFrameSize - HeaderSize - 8 - IDSize
	// MaxFileData is the largest INDEX or ARCHIVE payload that fits in a frame.
	MaxFileData = MaxFrameSize - HeaderSize
	// MaxRequestIDs is the most chunk ids one REQUEST frame can carry.
	MaxRequestIDs = (MaxFrameSize - HeaderSize - 8) / IDSize
)

// Type is a frame's message type, the second le64 of its header.
type Type uint64

// The message types of caprotocol (caprotocol.h). There are no others: an
// unknown type is fatal to a casync peer.
const (
	TypeHello      Type = 0x3c71d0948ca5fbee
	TypeIndex      Type = 0xb32a91dd2b3e27f8
	TypeIndexEOF   Type = 0x4f0932f1043718f5
	TypeArchive    Type = 0x95d6428a69eddcc5
	TypeArchiveEOF Type = 0x450bef663f24cbad
	TypeRequest    Type = 0x8ab427e0f89d9210
	TypeChunk      Type = 0x5213dd180a84bc8c
	TypeMissing    Type = 0xd010f9fac82b7b6c
	TypeGoodbye    Type = 0xad205dbf1a3686c3
	TypeAbort      Type = 0xe7d9136b7efea352
)

var typeNames = map[Type]string{
	TypeHello:      "HELLO",
	TypeIndex:      "INDEX",
	TypeIndexEOF:   "INDEX_EOF",
	TypeArchive:    "ARCHIVE",
	TypeArchiveEOF: "ARCHIVE_EOF",
	TypeRequest:    "REQUEST",
	TypeChunk:      "CHUNK",
	TypeMissing:    "MISSING",
	TypeGoodbye:    "GOODBYE",
	TypeAbort:      "ABORT",
}

// String returns the type's protocol name, or its hex value if unknown.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("0x%016x", uint64(t))
}

// Known reports whether t is one of the ten caprotocol message types.
func (t Type) Known() bool {
	_, ok := typeNames[t]
	return ok
}

// Features is the HELLO feature word: the services the sender provides
// and the operations it wants (§1.4).
type Features uint64

// HELLO feature bits (CA_PROTOCOL_*), from the sender's point of view.
const (
	ReadableStore   Features = 0x1    // sender serves chunks
	WritableStore   Features = 0x2    // sender accepts chunks
	ReadableIndex   Features = 0x4    // sender serves an index
	WritableIndex   Features = 0x8    // sender accepts an index
	ReadableArchive Features = 0x10   // sender serves an archive blob
	WritableArchive Features = 0x20   // sender accepts an archive blob
	PullChunks      Features = 0x40   // sender wants to pull chunks from the peer
	PullIndex       Features = 0x80   // sender wants to pull the index from the peer
	PullArchive     Features = 0x100  // sender wants to pull the archive from the peer
	PushChunks      Features = 0x200  // sender wants to push chunks to the peer
	PushIndex       Features = 0x400  // sender wants to push an index to the peer
	PushIndexChunks Features = 0x800  // peer should REQUEST the chunks of the index the sender pushes
	PushArchive     Features = 0x1000 // sender wants to push an archive to the peer

	// AllFeatures is every defined bit (CA_PROTOCOL_FEATURE_FLAGS_MAX);
	// a HELLO with any other bit is refused with EPROTONOSUPPORT.
	AllFeatures Features = 0x1fff

	// Operations is every "I want to" bit.
	Operations = PullChunks | PullIndex | PullArchive | PushChunks | PushIndex | PushArchive
)

var featureNames = []string{
	"READABLE_STORE", "WRITABLE_STORE", "READABLE_INDEX", "WRITABLE_INDEX",
	"READABLE_ARCHIVE", "WRITABLE_ARCHIVE", "PULL_CHUNKS", "PULL_INDEX",
	"PULL_ARCHIVE", "PUSH_CHUNKS", "PUSH_INDEX", "PUSH_INDEX_CHUNKS", "PUSH_ARCHIVE",
}

// String lists the set bits by name, e.g. "PULL_CHUNKS|PULL_INDEX"; unknown
// bits are shown as one hex value.
func (f Features) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for i, n := range featureNames {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if rest := f &^ AllFeatures; rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint64(rest)))
	}
	return strings.Join(parts, "|")
}

// RequestFlags are the flags of a REQUEST frame.
type RequestFlags uint64

// RequestHighPriority asks for the chunks ahead of low-priority ones. It is
// the only REQUEST flag.
const RequestHighPriority RequestFlags = 1

// ChunkFlags are the flags of a CHUNK frame.
type ChunkFlags uint64

// ChunkCompressed marks a CHUNK payload as compressed (xz, gzip or zstd,
// told apart by magic bytes). It is the only CHUNK flag.
const ChunkCompressed ChunkFlags = 1

// Errors, wrapped in a *FrameError; test with errors.Is.
var (
	// ErrMalformed: a frame casync would refuse with EBADMSG (wrong size for
	// its type, flags out of range, bad ABORT text, HELLO word 0 or ~0).
	ErrMalformed = errors.New("malformed caprotocol frame")
	// ErrFrameTooLarge: the header declares a frame above the reader's limit.
	ErrFrameTooLarge = errors.New("caprotocol frame too large")
	// ErrUnknownType: the header names no caprotocol message type.
	ErrUnknownType = errors.New("unknown caprotocol message type")
	// ErrUnsupportedFeatures: a HELLO with bits above AllFeatures, which
	// casync refuses with EPROTONOSUPPORT.
	ErrUnsupportedFeatures = errors.New("unsupported caprotocol feature bits")
	// ErrIncompatible: the two HELLOs do not make a session (EBADE).
	ErrIncompatible = errors.New("incompatible caprotocol feature flags")
)

// FrameError describes a frame that was refused, on reading or before
// writing.
type FrameError struct {
	// Offset is where the frame starts in the stream, or -1 for a message
	// checked before it was written.
	Offset int64
	// Type and Size are the frame header's fields (Size 0 if the header
	// itself was incomplete).
	Type Type
	Size uint64
	// Err is the class of error: ErrMalformed, ErrFrameTooLarge,
	// ErrUnknownType, ErrUnsupportedFeatures or io.ErrUnexpectedEOF.
	Err error
	// Msg says what exactly was wrong.
	Msg string
}

// Error says where the frame was, its header and what was wrong.
func (e *FrameError) Error() string {
	where := "caproto: "
	if e.Offset >= 0 {
		where += fmt.Sprintf("frame at offset %d: ", e.Offset)
	}
	if e.Size != 0 {
		where += fmt.Sprintf("%s (size %d): ", e.Type, e.Size)
	}
	return where + e.Msg
}

// Unwrap returns the error's class.
func (e *FrameError) Unwrap() error { return e.Err }

// Linux errno values, as casync puts them in ABORT frames.
const (
	EBADE           = 52 // "Invalid exchange": incompatible HELLOs
	EBADMSG         = 74 // "Bad message": a frame casync refuses
	EPROTONOSUPPORT = 93 // "Protocol not supported": unknown HELLO bits
)

// Errno returns the errno a casync peer would report for err (EBADMSG for
// malformed, oversized, unknown or truncated frames, EPROTONOSUPPORT for
// unknown HELLO bits, EBADE for incompatible HELLOs), or 0 if err is none
// of these. A server can send it in its ABORT.
func Errno(err error) uint32 {
	switch {
	case errors.Is(err, ErrUnsupportedFeatures):
		return EPROTONOSUPPORT
	case errors.Is(err, ErrIncompatible):
		return EBADE
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrFrameTooLarge),
		errors.Is(err, ErrUnknownType), errors.Is(err, io.ErrUnexpectedEOF):
		return EBADMSG
	}
	return 0
}

func appendHeader(dst []byte, size int, t Type) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, uint64(size))
	return binary.LittleEndian.AppendUint64(dst, uint64(t))
}
