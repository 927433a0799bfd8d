// Package datablob reads and writes the DataBlob envelope of the Proxmox
// Backup Server protocol (docs/formats.md §10): every chunk and every
// .blob file that a PBS client uploads or downloads travels in one.
//
// A DataBlob is an 8-byte magic that names its kind, a CRC-32 (IEEE,
// little-endian) and, for the two encrypted kinds, a 16-byte IV and a
// 16-byte AES-GCM tag; the payload follows to the end of the buffer. The
// payload is the data itself, one zstd frame of it, or ciphertext.
//
// The CRC covers the payload only: everything after the kind's header, so
// for the encrypted kinds it starts after the tag, not after the CRC field.
// That is how Proxmox computes it, and a blob checked any other way would be
// refused by every real client.
//
// Parse never copies and never allocates for the payload; Decode
// decompresses with a hard output limit. Nothing here can decrypt: the
// server never holds the client's key, so it checks encrypted blobs by
// their CRC alone.
package datablob

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

var le = binary.LittleEndian

// Sizes and limits.
const (
	// HeaderSize is the header of the unencrypted kinds: magic and CRC.
	HeaderSize = 12
	// EncryptedHeaderSize is the header of the encrypted kinds: magic,
	// CRC, IV and tag.
	EncryptedHeaderSize = HeaderSize + IVSize + TagSize
	// IVSize is the size of an encrypted blob's AES-GCM IV.
	IVSize = 16
	// TagSize is the size of an encrypted blob's AES-GCM tag.
	TagSize = 16

	// MaxChunkSize is the largest chunk, uncompressed, that PBS produces
	// or accepts: 16 MiB. (chunkbridge's own store accepts a little less,
	// format.MaxChunk; that is the gateway's check, not the envelope's.)
	MaxChunkSize = 16 << 20
	// MaxBlobSize is the largest .blob file, uncompressed: 128 MiB.
	MaxBlobSize = 128 << 20

	// MaxEncodedChunkSize is the largest encoded chunk: an encrypted,
	// uncompressed chunk of MaxChunkSize bytes. Compressed kinds are never
	// larger, because PBS clients store data uncompressed when zstd does
	// not shrink it.
	MaxEncodedChunkSize = MaxChunkSize + EncryptedHeaderSize
	// MaxEncodedSize is the largest encoded blob, by the same reasoning:
	// the limit of Parse.
	MaxEncodedSize = MaxBlobSize + EncryptedHeaderSize
)

// Kind is the kind of a DataBlob, named by its magic.
type Kind uint8

// The four kinds. The zero Kind is invalid.
const (
	Uncompressed  Kind = 1 // plain data
	Zstd          Kind = 2 // one zstd frame of the data
	Encrypted     Kind = 3 // AES-256-GCM ciphertext of the data
	EncryptedZstd Kind = 4 // ciphertext of one zstd frame of the data
)

// The magics are the first 8 bytes of SHA-256 of a version string
// ("Proxmox Backup uncompressed blob v1.0" and so on), fixed for good.
var magics = [...][8]byte{
	Uncompressed:  {66, 171, 56, 7, 190, 131, 112, 161},
	Zstd:          {49, 185, 88, 66, 111, 182, 163, 127},
	Encrypted:     {123, 103, 133, 190, 34, 45, 76, 240},
	EncryptedZstd: {230, 89, 27, 191, 11, 191, 216, 11},
}

var kindNames = [...]string{
	Uncompressed:  "uncompressed",
	Zstd:          "zstd",
	Encrypted:     "encrypted",
	EncryptedZstd: "encrypted+zstd",
}

func (k Kind) valid() bool { return k >= Uncompressed && k <= EncryptedZstd }

// String returns the kind's name, e.g. "encrypted+zstd".
func (k Kind) String() string {
	if !k.valid() {
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
	return kindNames[k]
}

// Magic returns the kind's 8-byte magic; the zero array for an invalid kind.
func (k Kind) Magic() [8]byte {
	if !k.valid() {
		return [8]byte{}
	}
	return magics[k]
}

// Encrypted reports whether the kind carries ciphertext (and an IV and tag).
func (k Kind) Encrypted() bool { return k == Encrypted || k == EncryptedZstd }

// Compressed reports whether the kind's data, once decrypted if need be, is
// a zstd frame.
func (k Kind) Compressed() bool { return k == Zstd || k == EncryptedZstd }

// HeaderSize returns the size of the kind's header, where the payload starts.
func (k Kind) HeaderSize() int {
	if k.Encrypted() {
		return EncryptedHeaderSize
	}
	return HeaderSize
}

// KindOf returns the kind that magic names, or 0.
func KindOf(magic [8]byte) Kind {
	for k := Uncompressed; k <= EncryptedZstd; k++ {
		if magics[k] == magic {
			return k
		}
	}
	return 0
}

// Blob is a parsed DataBlob.
type Blob struct {
	Kind Kind
	// IV and Tag are the AES-GCM IV and tag of an encrypted kind; zero
	// otherwise.
	IV  [IVSize]byte
	Tag [TagSize]byte
	// Payload is everything after the header: the data, a zstd frame, or
	// ciphertext. Parse makes it alias its input.
	Payload []byte
}

// Encrypted reports whether the blob carries ciphertext.
func (b Blob) Encrypted() bool { return b.Kind.Encrypted() }

// CRC returns CRC-32 (IEEE) of the payload: what the header of a blob that
// Parse accepted carries, and what Encode writes.
func (b Blob) CRC() uint32 { return crc32.ChecksumIEEE(b.Payload) }

// EncodedSize returns the size of the encoded blob, header included.
func (b Blob) EncodedSize() int { return b.Kind.HeaderSize() + len(b.Payload) }

// Parse checks an encoded DataBlob and returns it with its payload aliasing
// b. It checks, in this order, that b holds a whole 12-byte header, that
// the magic is one of the four, that an encrypted blob holds its IV and
// tag, that b is at most MaxEncodedSize bytes, and that the CRC matches. It
// does not look inside the payload: Decode does that.
func Parse(b []byte) (Blob, error) { return parse(b, MaxEncodedSize) }

// ParseChunk is Parse with the chunk limit, MaxEncodedChunkSize.
func ParseChunk(b []byte) (Blob, error) { return parse(b, MaxEncodedChunkSize) }

func parse(b []byte, limit int) (Blob, error) {
	if len(b) < HeaderSize {
		return Blob{}, formatErr(ErrShort, "header", 0, "blob is %d bytes, shorter than the %d-byte header", len(b), HeaderSize)
	}
	kind := KindOf([8]byte(b[:8]))
	if kind == 0 {
		return Blob{}, formatErr(ErrBadMagic, "magic", 0, "% x is not a DataBlob magic", b[:8])
	}
	if len(b) < kind.HeaderSize() {
		return Blob{}, formatErr(ErrShort, "header", 0, "%s blob is %d bytes, shorter than its %d-byte header (magic, CRC, IV, tag)",
			kind, len(b), kind.HeaderSize())
	}
	if len(b) > limit {
		return Blob{}, formatErr(ErrTooLarge, "blob", 0, "%s blob is %d bytes, more than the %d-byte limit", kind, len(b), limit)
	}
	blob := Blob{Kind: kind, Payload: b[kind.HeaderSize():]}
	if kind.Encrypted() {
		blob.IV = [IVSize]byte(b[HeaderSize:])
		blob.Tag = [TagSize]byte(b[HeaderSize+IVSize:])
	}
	if got, want := blob.CRC(), le.Uint32(b[8:]); got != want {
		return Blob{}, formatErr(ErrCRCMismatch, "crc", 8, "header says %#08x, the %d-byte payload sums to %#08x", want, len(blob.Payload), got)
	}
	return blob, nil
}

// Append appends the encoded blob to dst, with the CRC computed from the
// payload. It refuses an invalid kind, and a blob larger than
// MaxEncodedSize, before appending anything.
func (b Blob) Append(dst []byte) ([]byte, error) {
	if !b.Kind.valid() {
		return dst, formatErr(ErrBadMagic, "kind", 0, "%s is not a DataBlob kind", b.Kind)
	}
	if n := b.EncodedSize(); n > MaxEncodedSize {
		return dst, formatErr(ErrTooLarge, "blob", 0, "%s blob would be %d bytes, more than the %d-byte limit", b.Kind, n, MaxEncodedSize)
	}
	m := magics[b.Kind]
	dst = append(dst, m[:]...)
	dst = le.AppendUint32(dst, b.CRC())
	if b.Kind.Encrypted() {
		dst = append(dst, b.IV[:]...)
		dst = append(dst, b.Tag[:]...)
	}
	return append(dst, b.Payload...), nil
}

// Encode returns the encoded blob in a new buffer of exactly its size.
func (b Blob) Encode() ([]byte, error) {
	if !b.Kind.valid() {
		return b.Append(nil) // the error
	}
	return b.Append(make([]byte, 0, b.EncodedSize()))
}

// EncodeRaw returns data as an uncompressed DataBlob. data may be at most
// MaxBlobSize bytes.
func EncodeRaw(data []byte) ([]byte, error) {
	if len(data) > MaxBlobSize {
		return nil, formatErr(ErrTooLarge, "data", HeaderSize, "%d bytes, more than the %d-byte limit", len(data), MaxBlobSize)
	}
	return Blob{Kind: Uncompressed, Payload: data}.Encode()
}

// zstdMagic starts every zstd frame (RFC 8878 §3.1.1).
var zstdMagic = [4]byte{0x28, 0xb5, 0x2f, 0xfd}

// EncodeZstd returns frame, which must already be zstd-compressed data, as
// a zstd DataBlob, without recompressing it: this is how a chunk stored as
// a zstd frame is served back. frame must start with the zstd magic; it is
// not otherwise checked, since it normally comes from chunkbridge's own
// store.
func EncodeZstd(frame []byte) ([]byte, error) {
	if len(frame) < len(zstdMagic) || [4]byte(frame) != zstdMagic {
		return nil, formatErr(ErrBadZstd, "payload", HeaderSize, "does not start with the zstd frame magic 28 b5 2f fd")
	}
	return Blob{Kind: Zstd, Payload: frame}.Encode()
}

// Sentinel errors, wrapped by every *FormatError; test with errors.Is.
var (
	// ErrShort: the blob is shorter than its header.
	ErrShort = errors.New("datablob: blob too short")
	// ErrBadMagic: the magic names none of the four kinds.
	ErrBadMagic = errors.New("datablob: unknown magic")
	// ErrCRCMismatch: the header's CRC is not the payload's.
	ErrCRCMismatch = errors.New("datablob: CRC mismatch")
	// ErrTooLarge: the blob, or the data it decodes to, is over a limit.
	ErrTooLarge = errors.New("datablob: too large")
	// ErrBadZstd: the payload of a zstd blob is not valid zstd.
	ErrBadZstd = errors.New("datablob: bad zstd payload")
	// ErrEncrypted: the blob is encrypted and cannot be decoded here.
	ErrEncrypted = errors.New("datablob: blob is encrypted")
)

// FormatError reports a blob that breaks the format or a limit: which field
// at which offset of the encoded blob, and what was wrong with it.
type FormatError struct {
	Field  string // e.g. "magic", "crc", "payload"
	Offset int    // the field's byte offset in the encoded blob
	Reason string // what was wrong, with the value
	Err    error  // one of the sentinel errors
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("datablob: %s at offset %d: %s", e.Field, e.Offset, e.Reason)
}

// Unwrap returns the sentinel error.
func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(sentinel error, field string, off int, format string, args ...any) *FormatError {
	return &FormatError{Field: field, Offset: off, Reason: fmt.Sprintf(format, args...), Err: sentinel}
}
