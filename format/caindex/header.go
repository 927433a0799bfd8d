package caindex

import (
	"encoding/binary"
	"fmt"
)

// Header is the INDEX header: what the chunker was told, and the feature
// flags (which include the digest).
type Header struct {
	// Flags is the feature word; see FeatureFlags.
	Flags FeatureFlags
	// ChunkSizeMin, ChunkSizeAvg and ChunkSizeMax are the chunker's
	// parameters. Each is in [ChunkSizeLimitMin, ChunkSizeLimitMax], with
	// min <= avg <= max. Only max binds readers: no chunk may be larger.
	ChunkSizeMin, ChunkSizeAvg, ChunkSizeMax uint64
}

// Digest returns the digest that names the index's chunks.
func (h Header) Digest() Digest { return h.Flags.Digest() }

// Validate applies casync's header checks: valid feature flags and sane
// chunk sizes. The error is a *FormatError.
func (h Header) Validate() error {
	if e := h.check(-1); e != nil {
		return e
	}
	return nil
}

// check validates h; off is the header's offset in a file, or -1.
func (h Header) check(off int64) *FormatError {
	at := func(field int64) int64 {
		if off < 0 {
			return -1
		}
		return off + field
	}
	if e := h.Flags.check(at(16)); e != nil {
		return e
	}
	sizes := []struct {
		name  string
		v     uint64
		field int64
	}{
		{"chunk_size_min", h.ChunkSizeMin, 24},
		{"chunk_size_avg", h.ChunkSizeAvg, 32},
		{"chunk_size_max", h.ChunkSizeMax, 40},
	}
	for _, s := range sizes {
		if s.v < ChunkSizeLimitMin || s.v > ChunkSizeLimitMax {
			return formatErr(at(s.field), s.name, ErrMalformed, "%d is outside [%d, %d]", s.v, ChunkSizeLimitMin, ChunkSizeLimitMax)
		}
	}
	if h.ChunkSizeMin > h.ChunkSizeAvg || h.ChunkSizeAvg > h.ChunkSizeMax {
		return formatErr(at(24), "chunk_size_min/avg/max", ErrMalformed, "%d/%d/%d: want min <= avg <= max", h.ChunkSizeMin, h.ChunkSizeAvg, h.ChunkSizeMax)
	}
	return nil
}

// BlobHeader returns the header `casync make` writes for a blob index
// (.caibx) with digest d and the given chunk sizes: flags EXCLUDE_NODUMP |
// EXCLUDE_FILE, plus SHA512_256 for that digest (0xb000000000000000, or
// 0x9000000000000000 for SHA-256). Use it to serve other chunkers' output,
// such as PMXBCKUP dynamic indexes, as a .caibx.
func BlobHeader(d Digest, min, avg, max uint64) (Header, error) {
	flags := FlagExcludeNoDump | FlagExcludeFile
	switch d {
	case SHA512_256:
		flags |= FlagSHA512_256
	case SHA256:
	default:
		return Header{}, formatErr(-1, "feature_flags", ErrMalformed, "unknown digest %d (want SHA256 or SHA512_256)", uint8(d))
	}
	h := Header{Flags: flags, ChunkSizeMin: min, ChunkSizeAvg: avg, ChunkSizeMax: max}
	if err := h.Validate(); err != nil {
		return Header{}, err
	}
	return h, nil
}

// appendHead appends the INDEX header and the TABLE header.
func appendHead(dst []byte, h Header) []byte {
	for _, v := range []uint64{HeaderSize, TypeIndex, uint64(h.Flags), h.ChunkSizeMin, h.ChunkSizeAvg, h.ChunkSizeMax, TableSizeUnknown, TypeTable} {
		dst = binary.LittleEndian.AppendUint64(dst, v)
	}
	return dst
}

// parseHead decodes and checks the first HeaderSize+TableHeaderSize bytes.
func parseHead(b []byte) (Header, *FormatError) {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	if u(0) != HeaderSize {
		return Header{}, formatErr(0, "header.size", ErrMalformed, "%d, want %d", u(0), HeaderSize)
	}
	if u(1) != TypeIndex {
		return Header{}, formatErr(8, "header.type", ErrMalformed, "0x%016x, want 0x%016x (CA_FORMAT_INDEX)", u(1), TypeIndex)
	}
	h := Header{Flags: FeatureFlags(u(2)), ChunkSizeMin: u(3), ChunkSizeAvg: u(4), ChunkSizeMax: u(5)}
	if e := h.check(0); e != nil {
		return Header{}, e
	}
	if u(6) != TableSizeUnknown {
		return Header{}, formatErr(48, "table.size", ErrMalformed, "0x%x, want 0x%x", u(6), TableSizeUnknown)
	}
	if u(7) != TypeTable {
		return Header{}, formatErr(56, "table.type", ErrMalformed, "0x%016x, want 0x%016x (CA_FORMAT_TABLE)", u(7), TypeTable)
	}
	return h, nil
}

// tableSize is the tail's size field for n items: table header, items,
// tail.
func tableSize(n int64) uint64 { return uint64(TableHeaderSize + ItemSize*n + TailSize) }

// appendTail appends the tail of a table of n items.
func appendTail(dst []byte, n int64) []byte {
	for _, v := range []uint64{0, 0, HeaderSize, tableSize(n), TailMarker} {
		dst = binary.LittleEndian.AppendUint64(dst, v)
	}
	return dst
}

// String shows the header as casync's tools would describe it.
func (h Header) String() string {
	return fmt.Sprintf("flags=%s digest=%s chunk sizes %d/%d/%d", h.Flags, h.Digest(), h.ChunkSizeMin, h.ChunkSizeAvg, h.ChunkSizeMax)
}
