// Package caindex reads and writes casync's index files: .caibx (blob
// index) and .caidx (archive index), which share one container format
// (reference/casync-protocol.md §5):
//
//	header  48 bytes  size=48, type=INDEX, feature_flags, chunk_size_min/avg/max
//	table   16 bytes  size=2^64-1, type=TABLE
//	items   40 bytes  each: end offset of the chunk in the stream, chunk id
//	tail    40 bytes  0, 0, index_offset=48, table size, TABLE_TAIL_MARKER
//
// all fields little-endian u64. Reading applies the checks casync's own
// reader applies (and refuses trailing bytes); writing produces exactly the
// bytes casync writes for the same header and chunks.
//
// The package is a pure codec: it knows nothing of stores or sockets, and
// every reader has a size limit checked before memory is committed.
package caindex

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
)

// Sizes of the parts of an index file, in bytes.
const (
	HeaderSize      = 48 // the INDEX header
	TableHeaderSize = 16 // the TABLE header that follows it
	ItemSize        = 40 // one table item
	TailSize        = 40 // the table tail, the same size as an item
	IDSize          = 32 // a chunk id

	// MinFileSize is the size of an index with no chunks.
	MinFileSize = HeaderSize + TableHeaderSize + TailSize
)

// Magic values of the format (caformat.h).
const (
	TypeIndex  uint64 = 0x96824d9c7b129ff9 // CA_FORMAT_INDEX, the header's type
	TypeTable  uint64 = 0xe75b9e112f17417d // CA_FORMAT_TABLE, the table header's type
	TailMarker uint64 = 0x4b4f050e5549ecd1 // CA_FORMAT_TABLE_TAIL_MARKER, the tail's last field
	// TableSizeUnknown is the table header's size: the table is written
	// as it grows, so its size is only stated again in the tail.
	TableSizeUnknown uint64 = 1<<64 - 1
)

// Chunk size limits (CA_CHUNK_SIZE_LIMIT_MIN/MAX) and casync's defaults.
const (
	ChunkSizeLimitMin = 1
	ChunkSizeLimitMax = 128 << 20

	DefaultChunkSizeMin = 16 << 10
	DefaultChunkSizeAvg = 64 << 10
	DefaultChunkSizeMax = 256 << 10
)

// DefaultMaxSize is the file size limit used when a reader is given none:
// 256 MiB, about 6.7 million chunks, or some 400 GiB of data at casync's
// default 64 KiB average chunk size.
const DefaultMaxSize = 256 << 20

// FileSize returns the size of an index file with n chunks.
func FileSize(n int) int64 { return MinFileSize + ItemSize*int64(n) }

// Digest is the hash that names the chunks of an index.
type Digest uint8

// The two digests casync knows. The index records which one with
// FlagSHA512_256.
const (
	SHA256     Digest = 1 // casync make --digest=sha256; PMXBCKUP's digest
	SHA512_256 Digest = 2 // casync's default
)

// String returns "sha256" or "sha512-256", the names chunkbridge records
// with stored chunks.
func (d Digest) String() string {
	switch d {
	case SHA256:
		return "sha256"
	case SHA512_256:
		return "sha512-256"
	}
	return fmt.Sprintf("Digest(%d)", uint8(d))
}

// New returns a hash.Hash computing d. Like Sum, it treats every value
// other than SHA256 as SHA512_256, casync's default.
func (d Digest) New() hash.Hash {
	if d == SHA256 {
		return sha256.New()
	}
	return sha512.New512_256()
}

// Sum returns the chunk id of data under d (SHA512_256 for any value
// other than SHA256).
func (d Digest) Sum(data []byte) [IDSize]byte {
	if d == SHA256 {
		return sha256.Sum256(data)
	}
	return sha512.Sum512_256(data)
}

// Errors, wrapped in a *FormatError; test with errors.Is.
var (
	// ErrMalformed: a field casync would refuse (EBADMSG or EINVAL).
	ErrMalformed = errors.New("malformed casync index")
	// ErrUnsupported: feature flags with bits casync does not know
	// (EOPNOTSUPP).
	ErrUnsupported = errors.New("unsupported casync index feature flags")
	// ErrTruncated: the input ends before the table's tail.
	ErrTruncated = errors.New("truncated casync index")
	// ErrTooLarge: the input goes on past the reader's size limit.
	ErrTooLarge = errors.New("casync index too large")
)

// FormatError says what was wrong with an index, and where.
type FormatError struct {
	// Offset is the byte offset of the offending field in the file, or -1
	// for a header or entry checked before it was written.
	Offset int64
	// Field names it: "header.size", "feature_flags", "item[12].offset",
	// "tail.size", …
	Field string
	// Err is the class: ErrMalformed, ErrUnsupported, ErrTruncated or
	// ErrTooLarge.
	Err error
	// Msg says what the field holds and what was expected.
	Msg string
}

// Error names the offset, the field and what was wrong with it.
func (e *FormatError) Error() string {
	s := "caindex: "
	if e.Offset >= 0 {
		s += fmt.Sprintf("offset %d: ", e.Offset)
	}
	if e.Field != "" {
		s += e.Field + ": "
	}
	return s + e.Msg
}

// Unwrap returns the error's class.
func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(off int64, field string, class error, format string, args ...any) *FormatError {
	return &FormatError{Offset: off, Field: field, Err: class, Msg: fmt.Sprintf(format, args...)}
}
