// Package pmxproto encodes and decodes PMXBCKUP packets, the 2019 Proxmox Backup
// binary protocol as DESIGN.md §7 defines it.
//
// A packet is a 6-byte packed little-endian header (id u8, type u8, length
// u32 counting the header too) followed by a type-specific body. The package
// knows nothing of sockets: a Reader decodes packets from an io.Reader, a
// Writer buffers encoded packets for an io.Writer, and every packet type has
// Encode(dst []byte) []byte, which appends the whole packet to dst.
//
// Decoding checks every limit before it allocates. A Reader reports two kinds
// of errors: a *FrameError means the byte stream can no longer be followed
// and the connection must be closed; a *BodyError means one well-framed
// packet had a bad body, the stream is still in sync, and the peer can be
// answered with an Error packet carrying the packet's id.
package pmxproto

import (
	"encoding/hex"
	"fmt"
)

// Sizes and limits of the framing.
const (
	// HeaderSize is the size of the packet header: id, type and length.
	HeaderSize = 6
	// MaxPacketSize is the largest packet, header included; a packet of
	// exactly this size is allowed.
	MaxPacketSize = 16 << 20
	// MaxBodySize is the largest packet body.
	MaxBodySize = MaxPacketSize - HeaderSize
	// DigestSize is the size of a chunk digest (SHA-256).
	DigestSize = 32
	// MaxUploadData is the most chunk data one UploadChunk packet carries.
	MaxUploadData = MaxBodySize - DigestSize
	// MaxChunkData is the most chunk data one Chunk packet carries: 8 bytes
	// less than MaxUploadData because of the offset field.
	MaxChunkData = MaxBodySize - 8 - DigestSize
	// MaxDigestsPerPacket is the most digests a HashListPart or
	// DownloadChunks packet carries.
	MaxDigestsPerPacket = MaxBodySize / DigestSize
	// MaxEntriesPerPacket is the most 40-byte records a BackupDataFixed or
	// BackupDataDynamic packet carries.
	MaxEntriesPerPacket = MaxBodySize / entrySize
)

// Protocol constants carried by Hello.
const (
	// Magic is the 8-byte magic at the start of a Hello body.
	Magic = "PMXBCKUP"
	// Version is the protocol version this package speaks; clients require
	// an exact match.
	Version uint32 = 1
)

const entrySize = 8 + DigestSize

// Type is a packet type, the second header byte.
type Type uint8

// The packet types, numbered in the order the original protocol declared
// them. Any other value is a framing error.
const (
	TypeHello             Type = 0  // server → client, first packet, id 0
	TypeOk                Type = 1  // server → client, acknowledges UploadChunk and BackupFinished
	TypeError             Type = 2  // server → client, fails the request with the same id
	TypeGetHashList       Type = 3  // client → server, asks for an index's digests
	TypeHashListPart      Type = 4  // server → client, digests; an empty one ends the list
	TypeDownloadChunks    Type = 5  // client → server, asks for chunks by digest
	TypeChunk             Type = 6  // server → client, one requested chunk
	TypeUploadChunk       Type = 7  // client → server, digest and raw data
	TypeCreateBackup      Type = 8  // client → server, opens an index file stream
	TypeBackupCreated     Type = 9  // server → client, the new index's store-relative path
	TypeBackupDataFixed   Type = 10 // client → server, fixed index slots
	TypeBackupDataDynamic Type = 11 // client → server, dynamic index entries
	TypeBackupFinished    Type = 12 // client → server, closes an index file stream
	maxType                    = TypeBackupFinished
)

var typeNames = [...]string{
	TypeHello:             "Hello",
	TypeOk:                "Ok",
	TypeError:             "Error",
	TypeGetHashList:       "GetHashList",
	TypeHashListPart:      "HashListPart",
	TypeDownloadChunks:    "DownloadChunks",
	TypeChunk:             "Chunk",
	TypeUploadChunk:       "UploadChunk",
	TypeCreateBackup:      "CreateBackup",
	TypeBackupCreated:     "BackupCreated",
	TypeBackupDataFixed:   "BackupDataFixed",
	TypeBackupDataDynamic: "BackupDataDynamic",
	TypeBackupFinished:    "BackupFinished",
}

// String returns the packet type's name, or "Type(n)" for an unknown value.
func (t Type) String() string {
	if t <= maxType {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// ErrorID is the code in an Error packet's first body byte.
type ErrorID uint8

// Error codes. Decoding accepts any value, so that a newer server's codes
// reach the caller; only these two are defined.
const (
	ErrorGeneric ErrorID = 0 // the request failed; the reason says why
	ErrorBusy    ErrorID = 1 // a second hash list was requested while one is streaming
)

// String returns the code's name, or "ErrorID(n)" for an undefined value.
func (e ErrorID) String() string {
	switch e {
	case ErrorGeneric:
		return "Generic"
	case ErrorBusy:
		return "Busy"
	}
	return fmt.Sprintf("ErrorID(%d)", uint8(e))
}

// Flags is CreateBackup's backup_flags bitmask.
type Flags uint8

// Backup flags. Other bits are refused.
const (
	// FlagExcl: the snapshot must not exist yet.
	FlagExcl Flags = 0x01
	// FlagRaw: "the data represents a raw file". Never read by the original
	// client or server; carried, not interpreted.
	FlagRaw Flags = 0x02
	// FlagDynamicChunks: the file is a dynamic (.didx) index of
	// variable-size chunks; without it the file is a fixed (.fidx) index.
	FlagDynamicChunks Flags = 0x04

	knownFlags = FlagExcl | FlagRaw | FlagDynamicChunks
)

// String lists the set flags, e.g. "EXCL|DYNAMIC_CHUNKS", or "0".
func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	s := ""
	add := func(name string) {
		if s != "" {
			s += "|"
		}
		s += name
	}
	if f&FlagExcl != 0 {
		add("EXCL")
	}
	if f&FlagRaw != 0 {
		add("RAW")
	}
	if f&FlagDynamicChunks != 0 {
		add("DYNAMIC_CHUNKS")
	}
	if rest := f &^ knownFlags; rest != 0 {
		add(fmt.Sprintf("0x%02x", uint8(rest)))
	}
	return s
}

// BackupType is CreateBackup's backup_type: what kind of guest a snapshot
// belongs to, and the first path segment of its directory.
type BackupType uint8

// Backup types. Other values are refused.
const (
	BackupVM   BackupType = 0 // "vm"
	BackupCT   BackupType = 1 // "ct"
	BackupHost BackupType = 2 // "host"
)

// String returns the directory name: "vm", "ct" or "host", or
// "BackupType(n)" for an unknown value.
func (b BackupType) String() string {
	switch b {
	case BackupVM:
		return "vm"
	case BackupCT:
		return "ct"
	case BackupHost:
		return "host"
	}
	return fmt.Sprintf("BackupType(%d)", uint8(b))
}

// ParseBackupType maps "vm", "ct" or "host" to its BackupType.
func ParseBackupType(s string) (BackupType, error) {
	switch s {
	case "vm":
		return BackupVM, nil
	case "ct":
		return BackupCT, nil
	case "host":
		return BackupHost, nil
	}
	return 0, fmt.Errorf("pmx wire: unknown backup type %q (want vm, ct or host)", s)
}

// Digest is a 32-byte chunk digest: SHA-256 of the uncompressed chunk data.
type Digest [DigestSize]byte

// String returns the digest as 64 lowercase hex characters.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }
