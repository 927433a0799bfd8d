// Package pbsidx reads and writes the index files of today's Proxmox
// Backup Server (reference pbs-protocol.md §3): the checksummed format of
// June 2019 and later, with a binary magic and index_csum in the header.
// The catalog keeps storing its own, older format (package pbsindex); the
// PBS gateway serves this one, built from the stored digests and offsets.
//
// Both files start with a 4096-byte header: magic[8], uuid[16], ctime
// i64, index_csum[32], then for .fidx size u64 and chunk_size u64; the
// rest is zero. A .fidx holds one 32-byte digest per slot; a .didx one
// (end offset u64, digest) entry per chunk. Integers are little-endian.
// index_csum is SHA-256 over the digests (.fidx) or over each entry's end
// offset and digest (.didx).
//
// Parsers check every size against the input before allocating, check
// the checksum, refuse anything the writers would not produce, and never
// panic.
package pbsidx

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"

	"github.com/chunkbridge/chunkbridge/format/pbsindex"
)

const (
	// HeaderSize is the size of both headers, padding included.
	HeaderSize = 4096
	// FixedEntrySize and DynamicEntrySize are the sizes of one entry.
	FixedEntrySize   = 32
	DynamicEntrySize = 40
)

// The magics (proxmox-backup's file_formats.rs).
var (
	FixedMagic   = [8]byte{47, 127, 65, 237, 145, 253, 15, 205}
	DynamicMagic = [8]byte{28, 145, 78, 165, 25, 186, 179, 205}
)

// Header field offsets.
const (
	offUUID      = 8
	offCTime     = 24
	offCsum      = 32
	offSize      = 64 // .fidx only
	offChunkSize = 72 // .fidx only
	fixedUsed    = 80
	dynamicUsed  = 64
)

var le = binary.LittleEndian

// Digest and UUID are the catalog format's: the two formats describe the
// same files.
type (
	Digest = pbsindex.Digest
	UUID   = pbsindex.UUID
)

// Fixed is a fixed index: an image of Size bytes in ChunkSize slots, the
// last one possibly shorter.
type Fixed struct {
	UUID      UUID
	CTime     int64
	Size      uint64
	ChunkSize uint64
	Digests   []Digest
}

// DynamicEntry is one chunk of a dynamic index: it ends at End (exclusive).
type DynamicEntry struct {
	End    uint64
	Digest Digest
}

// Dynamic is a dynamic index.
type Dynamic struct {
	UUID    UUID
	CTime   int64
	Entries []DynamicEntry
}

// Csum computes an index_csum as entries arrive, so a writer can check a
// client's checksum without keeping its file: AddDigest for a fixed index,
// AddEntry for a dynamic one.
type Csum struct{ h hash.Hash }

// NewCsum returns an empty checksum.
func NewCsum() *Csum { return &Csum{h: sha256.New()} }

// AddDigest adds one slot of a fixed index.
func (c *Csum) AddDigest(d Digest) { c.h.Write(d[:]) }

// AddEntry adds one entry of a dynamic index.
func (c *Csum) AddEntry(end uint64, d Digest) {
	var b [8]byte
	le.PutUint64(b[:], end)
	c.h.Write(b[:])
	c.h.Write(d[:])
}

// Sum is the checksum of what was added.
func (c *Csum) Sum() [32]byte { return [32]byte(c.h.Sum(nil)) }

// Csum is f's index_csum.
func (f *Fixed) Csum() [32]byte {
	c := NewCsum()
	for _, d := range f.Digests {
		c.AddDigest(d)
	}
	return c.Sum()
}

// Csum is d's index_csum.
func (d *Dynamic) Csum() [32]byte {
	c := NewCsum()
	for _, e := range d.Entries {
		c.AddEntry(e.End, e.Digest)
	}
	return c.Sum()
}

// Size is the stream's size: the last entry's end.
func (d *Dynamic) Size() uint64 {
	if len(d.Entries) == 0 {
		return 0
	}
	return d.Entries[len(d.Entries)-1].End
}

// Slots is how many slots an image of size bytes has in chunkSize slots.
func Slots(size, chunkSize uint64) (uint64, error) {
	if chunkSize == 0 {
		return 0, errors.New("pbsidx: chunk size 0")
	}
	return size/chunkSize + min(size%chunkSize, 1), nil
}

// Sentinel errors, wrapped by every *FormatError.
var (
	ErrShort    = errors.New("pbsidx: index too short")
	ErrBadMagic = errors.New("pbsidx: wrong magic")
	ErrCsum     = errors.New("pbsidx: index_csum mismatch")
	ErrInvalid  = errors.New("pbsidx: invalid index")
	ErrTooLarge = errors.New("pbsidx: too many entries")
)

// FormatError says what is wrong with an index and where.
type FormatError struct {
	Err    error
	Offset int
	Reason string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%v at byte %d: %s", e.Err, e.Offset, e.Reason)
}

func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(err error, off int, format string, args ...any) error {
	return &FormatError{Err: err, Offset: off, Reason: fmt.Sprintf(format, args...)}
}
