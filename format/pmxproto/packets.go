package pmxproto

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Packet is one PMXBCKUP packet. The concrete types are the pointer types
// *Hello, *Ok, *Error, *GetHashList, *HashListPart, *DownloadChunks, *Chunk,
// *UploadChunk, *CreateBackup, *BackupCreated, *BackupDataFixed,
// *BackupDataDynamic and *BackupFinished.
type Packet interface {
	// PacketID returns the header's id: a transaction id, or for backup
	// file streams the id of the CreateBackup that opened the stream.
	PacketID() uint8
	// PacketType returns the header's type.
	PacketType() Type
	// Validate reports, as a *BodyError, why the packet cannot be encoded
	// as it is: a field too long for its length prefix, a value out of
	// range, a packet over MaxPacketSize. A Reader never returns a packet
	// that fails Validate.
	Validate() error
	// Encode appends the whole packet, header included, to dst and returns
	// the extended slice. It does not validate (the Writer does): a packet
	// that fails Validate encodes to unspecified bytes, never a panic.
	Encode(dst []byte) []byte
}

// maxTimestamp is 9999-12-31T23:59:59Z: later times have no RFC 3339 form,
// and CreateBackup's timestamp names a directory in RFC 3339.
const maxTimestamp = 253402300799

// startPacket appends a header with a zero length, having made room for
// body more bytes, and returns where the packet starts; finishPacket fills
// the length in.
func startPacket(dst []byte, id uint8, t Type, body int) ([]byte, int) {
	dst = slices.Grow(dst, HeaderSize+body)
	return append(dst, id, byte(t), 0, 0, 0, 0), len(dst)
}

func finishPacket(dst []byte, start int) []byte {
	n := len(dst) - start
	if n > math.MaxUint32 {
		n = math.MaxUint32 // unreadable on purpose: over MaxPacketSize
	}
	binary.LittleEndian.PutUint32(dst[start+2:], uint32(n))
	return dst
}

func checkSize(id uint8, t Type, body int) *BodyError {
	if body > MaxBodySize {
		return bodyErr(id, t, "body", 0, "%d bytes exceed the %d-byte limit of a packet body", body, MaxBodySize)
	}
	return nil
}

// checkText checks a length-prefixed string: 1..max bytes of UTF-8 without
// NUL. field is the string's name; lenField that of its length prefix.
func checkText(id uint8, t Type, lenField, field string, off int, s string, max int) *BodyError {
	if len(s) == 0 {
		return bodyErr(id, t, lenField, off-2, "%s is empty", field)
	}
	if len(s) > max {
		return bodyErr(id, t, lenField, off-2, "%s is %d bytes, more than %d", field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return bodyErr(id, t, field, off, "%q is not valid UTF-8", s)
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return bodyErr(id, t, field, off+i, "%q contains a NUL byte", s)
	}
	return nil
}

// asError turns a nil *BodyError into a nil error.
func asError(e *BodyError) error {
	if e == nil {
		return nil
	}
	return e
}

// Hello is the server's first packet, sent with id 0. Decoding checks the
// magic but not the version, so that a client can report the version it got.
type Hello struct {
	ID      uint8  // 0 from a conforming server
	Version uint32 // Version for this protocol
}

// PacketID returns the packet's id.
func (p *Hello) PacketID() uint8 { return p.ID }

// PacketType returns TypeHello.
func (p *Hello) PacketType() Type { return TypeHello }

// Validate always succeeds: every Hello can be encoded.
func (p *Hello) Validate() error { return nil }

// Encode appends the packet to dst: magic "PMXBCKUP", then version u32.
func (p *Hello) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeHello, 12)
	dst = append(dst, Magic...)
	dst = binary.LittleEndian.AppendUint32(dst, p.Version)
	return finishPacket(dst, start)
}

func decodeHello(id uint8, b []byte) (Packet, *BodyError) {
	if string(b[:8]) != Magic {
		return nil, bodyErr(id, TypeHello, "magic", 0, "got %q, want %q", b[:8], Magic)
	}
	return &Hello{ID: id, Version: binary.LittleEndian.Uint32(b[8:])}, nil
}

// Ok acknowledges an UploadChunk or a BackupFinished with the same id. Its
// body is empty.
type Ok struct {
	ID uint8 // the acknowledged request's or stream's id
}

// PacketID returns the packet's id.
func (p *Ok) PacketID() uint8 { return p.ID }

// PacketType returns TypeOk.
func (p *Ok) PacketType() Type { return TypeOk }

// Validate always succeeds.
func (p *Ok) Validate() error { return nil }

// Encode appends the 6-byte packet to dst.
func (p *Ok) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeOk, 0)
	return finishPacket(dst, start)
}

// Error fails the request or stream with the same id (DESIGN §7.4): a code,
// then optionally a UTF-8 reason, an extension that original clients ignore.
type Error struct {
	ID     uint8   // the failed request's or stream's id
	Code   ErrorID // what kind of failure
	Reason string  // UTF-8, may be empty
}

// PacketID returns the packet's id.
func (p *Error) PacketID() uint8 { return p.ID }

// PacketType returns TypeError.
func (p *Error) PacketType() Type { return TypeError }

// Validate checks that the reason is UTF-8 and fits in a packet.
func (p *Error) Validate() error { return asError(p.check()) }

func (p *Error) check() *BodyError {
	if e := checkSize(p.ID, TypeError, 1+len(p.Reason)); e != nil {
		return e
	}
	if !utf8.ValidString(p.Reason) {
		return bodyErr(p.ID, TypeError, "reason", 1, "%q is not valid UTF-8", p.Reason)
	}
	return nil
}

// Encode appends the packet to dst: code u8, then the reason's bytes.
func (p *Error) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeError, 1+len(p.Reason))
	dst = append(dst, byte(p.Code))
	dst = append(dst, p.Reason...)
	return finishPacket(dst, start)
}

func decodeError(id uint8, b []byte) (Packet, *BodyError) {
	p := &Error{ID: id, Code: ErrorID(b[0]), Reason: string(b[1:])}
	return p, p.check()
}

// GetHashList asks for the digests of a stored index, named by the
// store-relative path that BackupCreated returned. The reply is HashListPart
// packets with the same id, the last one empty.
type GetHashList struct {
	ID   uint8  // transaction id of the listing
	Name string // 1..65535 bytes of UTF-8, no NUL
}

// PacketID returns the packet's id.
func (p *GetHashList) PacketID() uint8 { return p.ID }

// PacketType returns TypeGetHashList.
func (p *GetHashList) PacketType() Type { return TypeGetHashList }

// Validate checks the name.
func (p *GetHashList) Validate() error { return asError(p.check()) }

func (p *GetHashList) check() *BodyError {
	return checkText(p.ID, TypeGetHashList, "name_length", "name", 2, p.Name, math.MaxUint16)
}

// Encode appends the packet to dst: name_length u16, then the name.
func (p *GetHashList) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeGetHashList, 2+len(p.Name))
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(p.Name)))
	dst = append(dst, p.Name...)
	return finishPacket(dst, start)
}

func decodeGetHashList(id uint8, b []byte) (Packet, *BodyError) {
	s, e := decodeText16(id, TypeGetHashList, "name_length", b)
	if e != nil {
		return nil, e
	}
	p := &GetHashList{ID: id, Name: s}
	return p, p.check()
}

// decodeText16 reads a u16 length and exactly that many bytes.
func decodeText16(id uint8, t Type, lenField string, b []byte) (string, *BodyError) {
	n := int(binary.LittleEndian.Uint16(b))
	if len(b)-2 != n {
		return "", bodyErr(id, t, lenField, 0, "says %d bytes follow, but %d do", n, len(b)-2)
	}
	return string(b[2:]), nil
}

// HashListPart carries digests of the index a GetHashList named, in index
// order, duplicates included. A part with no digests ends the list.
type HashListPart struct {
	ID      uint8    // the GetHashList's id
	Digests []Digest // at most MaxDigestsPerPacket
}

// PacketID returns the packet's id.
func (p *HashListPart) PacketID() uint8 { return p.ID }

// PacketType returns TypeHashListPart.
func (p *HashListPart) PacketType() Type { return TypeHashListPart }

// Validate checks that the digests fit in one packet.
func (p *HashListPart) Validate() error {
	return asError(checkSize(p.ID, TypeHashListPart, DigestSize*len(p.Digests)))
}

// Encode appends the packet to dst: the digests back to back.
func (p *HashListPart) Encode(dst []byte) []byte {
	return appendDigests(dst, p.ID, TypeHashListPart, p.Digests)
}

func appendDigests(dst []byte, id uint8, t Type, ds []Digest) []byte {
	dst, start := startPacket(dst, id, t, DigestSize*len(ds))
	for i := range ds {
		dst = append(dst, ds[i][:]...)
	}
	return finishPacket(dst, start)
}

func decodeDigests(b []byte) []Digest {
	ds := make([]Digest, len(b)/DigestSize)
	for i := range ds {
		copy(ds[i][:], b[i*DigestSize:])
	}
	return ds
}

// DownloadChunks asks for chunks by digest (DESIGN §7.10). The reply is one
// Chunk per digest with the same id, in request order, or an Error at the
// first missing digest.
type DownloadChunks struct {
	ID      uint8    // transaction id of the download
	Digests []Digest // 1..MaxDigestsPerPacket
}

// PacketID returns the packet's id.
func (p *DownloadChunks) PacketID() uint8 { return p.ID }

// PacketType returns TypeDownloadChunks.
func (p *DownloadChunks) PacketType() Type { return TypeDownloadChunks }

// Validate checks that there is at least one digest and that they fit.
func (p *DownloadChunks) Validate() error {
	if len(p.Digests) == 0 {
		return bodyErr(p.ID, TypeDownloadChunks, "body", 0, "no digests: a request must name at least one chunk")
	}
	return asError(checkSize(p.ID, TypeDownloadChunks, DigestSize*len(p.Digests)))
}

// Encode appends the packet to dst: the digests back to back.
func (p *DownloadChunks) Encode(dst []byte) []byte {
	return appendDigests(dst, p.ID, TypeDownloadChunks, p.Digests)
}

// Chunk answers a DownloadChunks with the same id: one requested chunk.
type Chunk struct {
	// ID is the DownloadChunks request's id.
	ID uint8
	// Offset is the position of Digest in the request's digest list
	// (DESIGN §7.10).
	Offset uint64
	// Digest is the requested digest.
	Digest Digest
	// Data is the raw, uncompressed chunk: 1..MaxChunkData bytes. A decoded
	// Chunk owns it.
	Data []byte
}

// PacketID returns the packet's id.
func (p *Chunk) PacketID() uint8 { return p.ID }

// PacketType returns TypeChunk.
func (p *Chunk) PacketType() Type { return TypeChunk }

// Validate checks the data size.
func (p *Chunk) Validate() error {
	return asError(checkData(p.ID, TypeChunk, 8+DigestSize, len(p.Data), MaxChunkData))
}

func checkData(id uint8, t Type, off, n, max int) *BodyError {
	if n == 0 {
		return bodyErr(id, t, "data", off, "chunk data is empty")
	}
	if n > max {
		return bodyErr(id, t, "data", off, "%d bytes of chunk data exceed the limit of %d", n, max)
	}
	return nil
}

// Encode appends the packet to dst: offset u64, digest, data.
func (p *Chunk) Encode(dst []byte) []byte {
	dst = p.encodeHead(slices.Grow(dst, HeaderSize+8+DigestSize+len(p.Data)))
	return append(dst, p.Data...)
}

// EncodeHead appends everything of the packet before Data to dst: the
// packet is that, then Data, so a writer can send Data without copying it.
func (p *Chunk) EncodeHead(dst []byte) []byte { return p.encodeHead(dst) }

func (p *Chunk) encodeHead(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeChunk, 8+DigestSize)
	dst = binary.LittleEndian.AppendUint64(dst, p.Offset)
	dst = append(dst, p.Digest[:]...)
	binary.LittleEndian.PutUint32(dst[start+2:], packetLen(len(dst)-start+len(p.Data)))
	return dst
}

func (p *Chunk) payload() []byte { return p.Data }

func packetLen(n int) uint32 {
	if n > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(n)
}

func decodeChunk(id uint8, b []byte) (Packet, *BodyError) {
	p := &Chunk{ID: id, Offset: binary.LittleEndian.Uint64(b), Data: b[8+DigestSize:]}
	copy(p.Digest[:], b[8:])
	return p, nil
}

// UploadChunk stores a chunk (DESIGN §7.3). The server replies Ok with the
// same id, or Error if the digest does not match the data.
type UploadChunk struct {
	ID     uint8  // transaction id of the upload
	Digest Digest // SHA-256 of Data
	// Data is the raw, uncompressed chunk: 1..MaxUploadData bytes. A decoded
	// UploadChunk owns it.
	Data []byte
}

// PacketID returns the packet's id.
func (p *UploadChunk) PacketID() uint8 { return p.ID }

// PacketType returns TypeUploadChunk.
func (p *UploadChunk) PacketType() Type { return TypeUploadChunk }

// Validate checks the data size. It does not hash the data.
func (p *UploadChunk) Validate() error {
	return asError(checkData(p.ID, TypeUploadChunk, DigestSize, len(p.Data), MaxUploadData))
}

// Encode appends the packet to dst: digest, then data.
func (p *UploadChunk) Encode(dst []byte) []byte {
	dst = p.encodeHead(slices.Grow(dst, HeaderSize+DigestSize+len(p.Data)))
	return append(dst, p.Data...)
}

func (p *UploadChunk) encodeHead(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeUploadChunk, DigestSize)
	dst = append(dst, p.Digest[:]...)
	binary.LittleEndian.PutUint32(dst[start+2:], packetLen(len(dst)-start+len(p.Data)))
	return dst
}

func (p *UploadChunk) payload() []byte { return p.Data }

func decodeUploadChunk(id uint8, b []byte) (Packet, *BodyError) {
	p := &UploadChunk{ID: id, Data: b[DigestSize:]}
	copy(p.Digest[:], b)
	return p, nil
}

// CreateBackup opens an index file in a snapshot; its id becomes the id of
// the file stream. The server replies BackupCreated or Error.
//
// Validate and the Reader enforce DESIGN §7.5: BackupID matches
// [A-Za-z0-9][A-Za-z0-9_.-]*, Name is non-empty UTF-8 without "/" or NUL, a
// fixed index has ChunkSize in 1..MaxUploadData, a dynamic one FileSize 0.
// They also refuse unknown flag bits, unknown backup types and timestamps
// after 9999-12-31T23:59:59Z, which have no RFC 3339 form for the snapshot
// directory.
type CreateBackup struct {
	// ID is the new file stream's id.
	ID uint8
	// BackupType is the snapshot's guest kind: vm, ct or host.
	BackupType BackupType
	// Timestamp is the snapshot time in Unix seconds.
	Timestamp uint64
	// Flags: EXCL, RAW, DYNAMIC_CHUNKS.
	Flags Flags
	// ChunkSize is the fixed chunk size, or the average chunk size the
	// client's chunker uses for a dynamic index (not interpreted).
	ChunkSize uint32
	// FileSize is the image size of a fixed index; 0 for a dynamic one.
	FileSize uint64
	BackupID string // 1..255 bytes
	Name     string // 1..255 bytes; the server appends .fidx or .didx
}

const createBackupFixed = 24

// PacketID returns the packet's id.
func (p *CreateBackup) PacketID() uint8 { return p.ID }

// PacketType returns TypeCreateBackup.
func (p *CreateBackup) PacketType() Type { return TypeCreateBackup }

// Dynamic reports whether the file is a dynamic (.didx) index.
func (p *CreateBackup) Dynamic() bool { return p.Flags&FlagDynamicChunks != 0 }

// Exclusive reports whether the snapshot must not exist yet (EXCL).
func (p *CreateBackup) Exclusive() bool { return p.Flags&FlagExcl != 0 }

// Time returns Timestamp as a UTC time.
func (p *CreateBackup) Time() time.Time {
	if p.Timestamp > math.MaxInt64 {
		return time.Unix(math.MaxInt64, 0).UTC()
	}
	return time.Unix(int64(p.Timestamp), 0).UTC()
}

// Path returns the index's store-relative path, as BackupCreated carries it
// (DESIGN §7.5): <type>/<backup id>/<RFC 3339 UTC time>/<name>.fidx|.didx,
// e.g. "host/backup1/2019-03-06T09:06:52Z/foo.pxar.didx". It is meaningful
// only for a packet that passes Validate.
func (p *CreateBackup) Path() string {
	ext := ".fidx"
	if p.Dynamic() {
		ext = ".didx"
	}
	return p.BackupType.String() + "/" + p.BackupID + "/" + p.Time().Format(time.RFC3339) + "/" + p.Name + ext
}

// Validate checks every field against DESIGN §7.5 and the field widths.
func (p *CreateBackup) Validate() error { return asError(p.check()) }

func (p *CreateBackup) check() *BodyError {
	const t = TypeCreateBackup
	if p.BackupType > BackupHost {
		return bodyErr(p.ID, t, "backup_type", 0, "unknown backup type %d (want 0 vm, 1 ct or 2 host)", uint8(p.BackupType))
	}
	if e := checkBackupID(p.ID, p.BackupID); e != nil {
		return e
	}
	if p.Timestamp > maxTimestamp {
		return bodyErr(p.ID, t, "timestamp", 2, "%d is after 9999-12-31T23:59:59Z", p.Timestamp)
	}
	if p.Flags&^knownFlags != 0 {
		return bodyErr(p.ID, t, "flags", 10, "unknown bits 0x%02x in 0x%02x (known: EXCL 0x01, RAW 0x02, DYNAMIC_CHUNKS 0x04)", uint8(p.Flags&^knownFlags), uint8(p.Flags))
	}
	nameOff := createBackupFixed + len(p.BackupID)
	if len(p.Name) == 0 || len(p.Name) > math.MaxUint8 {
		return bodyErr(p.ID, t, "name_length", 11, "file name is %d bytes, want 1..255", len(p.Name))
	}
	if !utf8.ValidString(p.Name) {
		return bodyErr(p.ID, t, "name", nameOff, "%q is not valid UTF-8", p.Name)
	}
	if i := strings.IndexAny(p.Name, "/\x00"); i >= 0 {
		return bodyErr(p.ID, t, "name", nameOff+i, "%q contains %q at byte %d; a file name has no '/' or NUL", p.Name, p.Name[i], i)
	}
	if p.Dynamic() {
		if p.FileSize != 0 {
			return bodyErr(p.ID, t, "file_size", 16, "%d, but a dynamic index must have file_size 0", p.FileSize)
		}
	} else if p.ChunkSize == 0 || p.ChunkSize > MaxUploadData {
		return bodyErr(p.ID, t, "chunk_size", 12, "%d for a fixed index, want 1..%d", p.ChunkSize, MaxUploadData)
	}
	return nil
}

// checkBackupID enforces [A-Za-z0-9][A-Za-z0-9_.-]*, 1..255 bytes.
func checkBackupID(id uint8, s string) *BodyError {
	if len(s) == 0 || len(s) > math.MaxUint8 {
		return bodyErr(id, TypeCreateBackup, "id_length", 1, "backup id is %d bytes, want 1..255", len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if i > 0 {
			ok = ok || c == '_' || c == '.' || c == '-'
		}
		if !ok {
			return bodyErr(id, TypeCreateBackup, "id", createBackupFixed+i,
				"backup id %q has %q at byte %d; want [A-Za-z0-9][A-Za-z0-9_.-]*", s, c, i)
		}
	}
	return nil
}

// Encode appends the packet to dst: the 24-byte fixed part, then the backup
// id and the name.
func (p *CreateBackup) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeCreateBackup, createBackupFixed+len(p.BackupID)+len(p.Name))
	dst = append(dst, byte(p.BackupType), uint8(len(p.BackupID)))
	dst = binary.LittleEndian.AppendUint64(dst, p.Timestamp)
	dst = append(dst, byte(p.Flags), uint8(len(p.Name)))
	dst = binary.LittleEndian.AppendUint32(dst, p.ChunkSize)
	dst = binary.LittleEndian.AppendUint64(dst, p.FileSize)
	dst = append(dst, p.BackupID...)
	dst = append(dst, p.Name...)
	return finishPacket(dst, start)
}

func decodeCreateBackup(id uint8, b []byte) (Packet, *BodyError) {
	idLen, nameLen := int(b[1]), int(b[11])
	if want := createBackupFixed + idLen + nameLen; len(b) != want {
		return nil, bodyErr(id, TypeCreateBackup, "body", 0,
			"%d bytes, but id_length %d and name_length %d make %d", len(b), idLen, nameLen, want)
	}
	p := &CreateBackup{
		ID:         id,
		BackupType: BackupType(b[0]),
		Timestamp:  binary.LittleEndian.Uint64(b[2:]),
		Flags:      Flags(b[10]),
		ChunkSize:  binary.LittleEndian.Uint32(b[12:]),
		FileSize:   binary.LittleEndian.Uint64(b[16:]),
		BackupID:   string(b[createBackupFixed : createBackupFixed+idLen]),
		Name:       string(b[createBackupFixed+idLen:]),
	}
	return p, p.check()
}

// BackupCreated answers a CreateBackup with the same id: the index's
// store-relative path, which GetHashList accepts later.
type BackupCreated struct {
	ID   uint8  // the CreateBackup's id
	Path string // 1..65535 bytes of UTF-8, no NUL
}

// PacketID returns the packet's id.
func (p *BackupCreated) PacketID() uint8 { return p.ID }

// PacketType returns TypeBackupCreated.
func (p *BackupCreated) PacketType() Type { return TypeBackupCreated }

// Validate checks the path.
func (p *BackupCreated) Validate() error { return asError(p.check()) }

func (p *BackupCreated) check() *BodyError {
	return checkText(p.ID, TypeBackupCreated, "path_length", "path", 2, p.Path, math.MaxUint16)
}

// Encode appends the packet to dst: path_length u16, then the path.
func (p *BackupCreated) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeBackupCreated, 2+len(p.Path))
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(p.Path)))
	dst = append(dst, p.Path...)
	return finishPacket(dst, start)
}

func decodeBackupCreated(id uint8, b []byte) (Packet, *BodyError) {
	s, e := decodeText16(id, TypeBackupCreated, "path_length", b)
	if e != nil {
		return nil, e
	}
	p := &BackupCreated{ID: id, Path: s}
	return p, p.check()
}

// FixedEntry fills one slot of a fixed index.
type FixedEntry struct {
	Index  uint64 // slot number, not a byte offset
	Digest Digest // the chunk in that slot
}

// BackupDataFixed fills slots of the fixed index opened by the CreateBackup
// with the same id. It has no reply.
type BackupDataFixed struct {
	ID      uint8        // the file stream's id
	Entries []FixedEntry // 1..MaxEntriesPerPacket; clients send one
}

// PacketID returns the packet's id.
func (p *BackupDataFixed) PacketID() uint8 { return p.ID }

// PacketType returns TypeBackupDataFixed.
func (p *BackupDataFixed) PacketType() Type { return TypeBackupDataFixed }

// Validate checks the number of entries.
func (p *BackupDataFixed) Validate() error {
	return asError(checkEntries(p.ID, TypeBackupDataFixed, len(p.Entries)))
}

func checkEntries(id uint8, t Type, n int) *BodyError {
	if n == 0 {
		return bodyErr(id, t, "body", 0, "no entries")
	}
	return checkSize(id, t, entrySize*n)
}

// Encode appends the packet to dst: index u64 and digest per entry.
func (p *BackupDataFixed) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeBackupDataFixed, entrySize*len(p.Entries))
	for i := range p.Entries {
		dst = binary.LittleEndian.AppendUint64(dst, p.Entries[i].Index)
		dst = append(dst, p.Entries[i].Digest[:]...)
	}
	return finishPacket(dst, start)
}

func decodeBackupDataFixed(id uint8, b []byte) (Packet, *BodyError) {
	es := make([]FixedEntry, len(b)/entrySize)
	for i := range es {
		r := b[i*entrySize:]
		es[i].Index = binary.LittleEndian.Uint64(r)
		copy(es[i].Digest[:], r[8:])
	}
	return &BackupDataFixed{ID: id, Entries: es}, nil
}

// DynamicEntry appends one chunk to a dynamic index.
type DynamicEntry struct {
	// Offset is the chunk's START offset in the file (DESIGN §7.7); the
	// server checks contiguity and stores end offsets itself.
	Offset uint64
	// Digest is the chunk's digest.
	Digest Digest
}

// BackupDataDynamic appends chunks to the dynamic index opened by the
// CreateBackup with the same id. It has no reply.
type BackupDataDynamic struct {
	ID      uint8          // the file stream's id
	Entries []DynamicEntry // 1..MaxEntriesPerPacket; clients send one
}

// PacketID returns the packet's id.
func (p *BackupDataDynamic) PacketID() uint8 { return p.ID }

// PacketType returns TypeBackupDataDynamic.
func (p *BackupDataDynamic) PacketType() Type { return TypeBackupDataDynamic }

// Validate checks the number of entries.
func (p *BackupDataDynamic) Validate() error {
	return asError(checkEntries(p.ID, TypeBackupDataDynamic, len(p.Entries)))
}

// Encode appends the packet to dst: start offset u64 and digest per entry.
func (p *BackupDataDynamic) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeBackupDataDynamic, entrySize*len(p.Entries))
	for i := range p.Entries {
		dst = binary.LittleEndian.AppendUint64(dst, p.Entries[i].Offset)
		dst = append(dst, p.Entries[i].Digest[:]...)
	}
	return finishPacket(dst, start)
}

func decodeBackupDataDynamic(id uint8, b []byte) (Packet, *BodyError) {
	es := make([]DynamicEntry, len(b)/entrySize)
	for i := range es {
		r := b[i*entrySize:]
		es[i].Offset = binary.LittleEndian.Uint64(r)
		copy(es[i].Digest[:], r[8:])
	}
	return &BackupDataDynamic{ID: id, Entries: es}, nil
}

// BackupFinished closes the file stream with the same id; the server replies
// Ok once the index is durably published (DESIGN §7.8), or Error. Its body
// is empty.
type BackupFinished struct {
	ID uint8 // the file stream's id
}

// PacketID returns the packet's id.
func (p *BackupFinished) PacketID() uint8 { return p.ID }

// PacketType returns TypeBackupFinished.
func (p *BackupFinished) PacketType() Type { return TypeBackupFinished }

// Validate always succeeds.
func (p *BackupFinished) Validate() error { return nil }

// Encode appends the 6-byte packet to dst.
func (p *BackupFinished) Encode(dst []byte) []byte {
	dst, start := startPacket(dst, p.ID, TypeBackupFinished, 0)
	return finishPacket(dst, start)
}
