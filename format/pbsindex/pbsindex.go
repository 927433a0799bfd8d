// Package pbsindex reads and writes the index files of a PMXBCKUP snapshot
// in the Proxmox formats of that protocol's time (reference
// pmxbckup-protocol.md §6): a fixed index (.fidx) holds one digest per
// fixed-size slot of an image, a dynamic index (.didx) one (end offset,
// digest) entry per variable-size chunk of a stream.
//
// Both files start with a 4096-byte header: a 12-byte ASCII magic, version
// u32 = 1, a 16-byte uuid and ctime u64, then for .fidx the image size and
// chunk size (u64 each); the rest is zero. All integers are little-endian.
// Entries follow the header directly. This format predates the checksummed
// one of June 2019 and has no index checksum.
//
// Parsers check every size against the input before allocating, refuse
// anything the writers would not produce, and never panic.
package pbsindex

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// Format constants.
const (
	// HeaderSize is the size of both headers, padding included.
	HeaderSize = 4096
	// Version is the only version either header may carry.
	Version = 1
	// FixedMagic starts a fixed index.
	FixedMagic = "PROXMOX-FIDX"
	// DynamicMagic starts a dynamic index.
	DynamicMagic = "PROXMOX-DIDX"
	// FixedEntrySize is the size of one fixed index entry: a digest.
	FixedEntrySize = 32
	// DynamicEntrySize is the size of one dynamic index entry: end offset
	// u64 and a digest.
	DynamicEntrySize = 40
	// DefaultMaxEntries is the entry limit of ReadFixed and ReadDynamic when
	// the caller gives none: 16 Mi entries, 512 MiB of fixed or 640 MiB of
	// dynamic entries (64 TiB at 4 MiB slots, 1 TiB at 64 KiB chunks).
	DefaultMaxEntries = 1 << 24
)

// Header field offsets.
const (
	offMagic     = 0
	offVersion   = 12
	offUUID      = 16
	offCTime     = 32
	offSize      = 40 // .fidx only
	offChunkSize = 48 // .fidx only
	fixedUsed    = 56 // bytes of the .fidx header before the zero padding
	dynamicUsed  = 40 // bytes of the .didx header before the zero padding
)

// Digest is a chunk digest: SHA-256 of the chunk's uncompressed data.
type Digest [32]byte

// String returns the digest as 64 lowercase hex characters.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// UUID identifies one index file.
type UUID [16]byte

// NewUUID returns a random (version 4) UUID.
func NewUUID() UUID {
	var u UUID
	rand.Read(u[:]) // never fails since Go 1.24
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

// Fixed is a fixed index: the image of Size bytes in slots of ChunkSize
// bytes (the last one possibly shorter), Digests[i] naming slot i.
type Fixed struct {
	UUID UUID // identifies this index file
	// CTime is when the index was created, in Unix seconds; not the
	// snapshot time.
	CTime uint64
	// Size is the image size in bytes.
	Size uint64
	// ChunkSize is the slot size in bytes, at least 1.
	ChunkSize uint64
	// Digests has exactly FixedSlots(Size, ChunkSize) entries.
	Digests []Digest
}

// FixedSlots returns the number of slots of an image of size bytes in
// chunkSize-byte slots: ceil(size / chunkSize).
func FixedSlots(size, chunkSize uint64) (uint64, error) {
	if chunkSize == 0 {
		return 0, errors.New("pbsindex: fixed index chunk size is 0")
	}
	n := size / chunkSize
	if size%chunkSize != 0 {
		n++
	}
	return n, nil
}

// Validate checks that the index can be written: a chunk size of at least 1
// and one digest per slot.
func (f *Fixed) Validate() error {
	slots, err := FixedSlots(f.Size, f.ChunkSize)
	if err != nil {
		return &FormatError{File: "fixed index", Field: "chunk_size", Offset: offChunkSize, Reason: "is 0, want at least 1"}
	}
	if uint64(len(f.Digests)) != slots {
		return &FormatError{File: "fixed index", Field: "digests", Offset: HeaderSize,
			Reason: fmt.Sprintf("%d digests, but size %d in %d-byte slots needs %d", len(f.Digests), f.Size, f.ChunkSize, slots)}
	}
	return nil
}

// DynamicEntry is one chunk of a dynamic index.
type DynamicEntry struct {
	// End is the offset just past the chunk in the stream: the sum of the
	// sizes of this chunk and all before it.
	End uint64
	// Digest names the chunk.
	Digest Digest
}

// Dynamic is a dynamic index: a stream cut into variable-size chunks.
type Dynamic struct {
	UUID UUID // identifies this index file
	// CTime is when the index was created, in Unix seconds.
	CTime uint64
	// Entries are the chunks in stream order; End offsets strictly
	// increase from above 0, so every chunk has at least 1 byte.
	Entries []DynamicEntry
}

// Size returns the stream size: the last chunk's end, or 0.
func (d *Dynamic) Size() uint64 {
	if len(d.Entries) == 0 {
		return 0
	}
	return d.Entries[len(d.Entries)-1].End
}

// Validate checks that the end offsets strictly increase from above 0.
func (d *Dynamic) Validate() error {
	var prev uint64
	for i, e := range d.Entries {
		if e.End <= prev {
			return &FormatError{File: "dynamic index", Field: fmt.Sprintf("entry %d end offset", i),
				Offset: int64(HeaderSize + i*DynamicEntrySize),
				Reason: fmt.Sprintf("%d does not exceed the previous end %d; chunks must be at least 1 byte", e.End, prev)}
		}
		prev = e.End
	}
	return nil
}

// FormatError reports an index file, or an index to be written, that breaks
// the format: which file kind, which field at which file offset, and what
// was wrong with its value.
type FormatError struct {
	File   string // "fixed index" or "dynamic index"
	Field  string // e.g. "magic", "chunk_size", "entry 7 end offset"
	Offset int64  // the field's byte offset in the file
	Reason string // what was wrong, with the value
	Err    error  // ErrTooManyEntries for a limit, else nil
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("pbsindex: %s: %s at offset %d: %s", e.File, e.Field, e.Offset, e.Reason)
}

// Unwrap returns ErrTooManyEntries for a limit violation.
func (e *FormatError) Unwrap() error { return e.Err }

// ErrTooManyEntries is wrapped by the error for an index with more entries
// than the reader's limit.
var ErrTooManyEntries = errors.New("pbsindex: too many index entries")
