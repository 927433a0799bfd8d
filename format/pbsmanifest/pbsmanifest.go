// Package pbsmanifest reads and writes index.json, the manifest of a Proxmox
// Backup Server snapshot (reference pbs-protocol.md §4; docs/formats.md
// §11). A client uploads it last, as the blob index.json.blob, and it names
// every other file of the snapshot with its size and checksum.
//
// The manifest is a JSON object with kebab-case keys: backup-type, backup-id
// and backup-time name the snapshot; files lists its archives; unprotected
// is a free-form object that the signature does not cover (the server
// records upload statistics and notes there); signature is the client's
// HMAC over the rest, or null.
//
// Parse is strict where a mistake would misplace or misname data (types,
// ids, times, file names, duplicates, key spelling) and lenient where real
// clients differ: a missing crypt-mode means "none" as in manifests older
// than Proxmox Backup 0.8, an empty or missing csum is kept as empty because
// the Go client writes "" for some files, and unknown keys are ignored as
// Proxmox ignores them.
package pbsmanifest

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits.
const (
	// MaxSize is the largest manifest Parse reads: 4 MiB, far more than
	// thousands of files and generous notes need.
	MaxSize = 4 << 20
	// MaxFiles is the most files one manifest lists.
	MaxFiles = 4096
	// MaxNameLen is the longest file name, in bytes: a path segment on
	// every file system.
	MaxNameLen = 255
	// MaxIDLen is the longest backup id, in bytes.
	MaxIDLen = 255
	// MaxBackupTime is the latest backup time, 9999-12-31T23:59:59Z, the
	// last second a snapshot directory name (RFC 3339, four-digit year)
	// can spell.
	MaxBackupTime = 253402300799
)

// BlobName is the name under which a client uploads the manifest.
const BlobName = "index.json.blob"

// BackupType is the kind of thing backed up.
type BackupType string

// The backup types.
const (
	TypeVM   BackupType = "vm"
	TypeCT   BackupType = "ct"
	TypeHost BackupType = "host"
)

// CryptMode says how a file is protected.
type CryptMode string

// The crypt modes.
const (
	CryptNone     CryptMode = "none"
	CryptEncrypt  CryptMode = "encrypt"
	CryptSignOnly CryptMode = "sign-only"
)

// ArchiveKind is what a file is, by its name's extension.
type ArchiveKind uint8

// The archive kinds; 0 is none.
const (
	FixedIndex   ArchiveKind = 1 // .fidx
	DynamicIndex ArchiveKind = 2 // .didx
	Blob         ArchiveKind = 3 // .blob
)

// KindOf returns the archive kind of a file name, or 0.
func KindOf(name string) ArchiveKind {
	switch {
	case strings.HasSuffix(name, ".fidx"):
		return FixedIndex
	case strings.HasSuffix(name, ".didx"):
		return DynamicIndex
	case strings.HasSuffix(name, ".blob"):
		return Blob
	}
	return 0
}

// File is one entry of a manifest's file list.
type File struct {
	// Filename is a plain name ending in .fidx, .didx or .blob.
	Filename string
	// CryptMode is how the file is protected; Parse fills in CryptNone
	// when the key is missing.
	CryptMode CryptMode
	// Size is the file's logical size: the image or archive size for an
	// index, the blob's encoded size for a blob.
	Size uint64
	// Csum is the file's SHA-256 (an index's index checksum) as 64 hex
	// digits, or "" when the client wrote none.
	Csum string
}

// Kind returns the file's archive kind.
func (f File) Kind() ArchiveKind { return KindOf(f.Filename) }

// Checksum returns Csum as bytes; ok is false when Csum is empty (or, on an
// unvalidated File, not 64 hex digits).
func (f File) Checksum() (sum [32]byte, ok bool) {
	if len(f.Csum) != 64 {
		return sum, false
	}
	if _, err := hex.Decode(sum[:], []byte(f.Csum)); err != nil {
		return [32]byte{}, false
	}
	return sum, true
}

// Manifest is a snapshot's index.json.
type Manifest struct {
	BackupType BackupType
	// BackupID names the backup group: [A-Za-z0-9_][A-Za-z0-9._-]*.
	BackupID string
	// BackupTime is the snapshot time, in Unix seconds.
	BackupTime int64
	// Files are the snapshot's files, in the client's order.
	Files []File
	// Unprotected is a JSON object, kept as the client wrote it; nil
	// means {}.
	Unprotected json.RawMessage
	// Signature is the client's hex HMAC-SHA256 of the manifest without
	// unprotected and signature, or "" when unsigned (null in JSON). The
	// server cannot check it: the key is the client's.
	Signature string
}

// Lookup returns the file named name.
func (m *Manifest) Lookup(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Filename == name {
			return f, true
		}
	}
	return File{}, false
}

// Validate checks everything Parse checks beyond JSON syntax, so that
// Marshal never writes a manifest Parse would refuse.
func (m *Manifest) Validate() error {
	switch m.BackupType {
	case TypeVM, TypeCT, TypeHost:
	default:
		return invalid("backup-type", "%q, want vm, ct or host", m.BackupType)
	}
	if err := checkID(m.BackupID); err != nil {
		return err
	}
	if m.BackupTime < 1 || m.BackupTime > MaxBackupTime {
		return invalid("backup-time", "%d, want 1 to %d", m.BackupTime, MaxBackupTime)
	}
	if len(m.Files) > MaxFiles {
		return &FormatError{Field: "files", Reason: fmt.Sprintf("%d files, more than %d", len(m.Files), MaxFiles), Err: ErrTooLarge}
	}
	seen := make(map[string]int, len(m.Files))
	for i, f := range m.Files {
		field := fmt.Sprintf("files[%d]", i)
		if err := checkName(field+".filename", f.Filename); err != nil {
			return err
		}
		if j, dup := seen[f.Filename]; dup {
			return invalid(field+".filename", "%q is listed twice, first at files[%d]", f.Filename, j)
		}
		seen[f.Filename] = i
		switch f.CryptMode {
		case CryptNone, CryptEncrypt, CryptSignOnly:
		default:
			return invalid(field+".crypt-mode", "%q, want none, encrypt or sign-only", f.CryptMode)
		}
		if _, ok := f.Checksum(); !ok && f.Csum != "" {
			return invalid(field+".csum", "%q, want 64 hex digits or empty", truncate(f.Csum))
		}
	}
	if m.Unprotected != nil && !isObject(m.Unprotected) {
		return invalid("unprotected", "%s, want a JSON object", truncate(string(m.Unprotected)))
	}
	return nil
}

// checkID applies Proxmox's backup id rule, [A-Za-z0-9_][A-Za-z0-9._-]*,
// with a length limit.
func checkID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return invalid("backup-id", "%d bytes, want 1 to %d", len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' ||
			i > 0 && (c == '.' || c == '-')
		if !ok {
			return invalid("backup-id", "%q: byte %d (%q) is not allowed; want [A-Za-z0-9_][A-Za-z0-9._-]*", truncate(id), i, c)
		}
	}
	return nil
}

// checkName: a file name becomes a path segment (and an object key) in the
// store, so it must be one plain segment. Proxmox's own rule is "no slash,
// no leading dot, a known extension"; control bytes, backslashes and the
// replacement character (the trace of invalid UTF-8 or a lone surrogate
// escape, which would make the name differ from what the client meant) are
// refused too.
func checkName(field, name string) error {
	if name == "" || len(name) > MaxNameLen {
		return invalid(field, "%d bytes, want 1 to %d", len(name), MaxNameLen)
	}
	if name == BlobName {
		return invalid(field, "%q is the manifest's own name", name)
	}
	if KindOf(name) == 0 || len(name) == len(".blob") {
		return invalid(field, "%q does not end in .fidx, .didx or .blob after a name", truncate(name))
	}
	if name[0] == '.' {
		return invalid(field, "%q starts with a dot", truncate(name))
	}
	for i, r := range name {
		if r < 0x20 || r == 0x7f || r == '/' || r == '\\' || r == utf8.RuneError {
			return invalid(field, "%q has %q at byte %d", truncate(name), r, i)
		}
	}
	return nil
}

func isObject(raw json.RawMessage) bool {
	t := strings.TrimLeft(string(raw), " \t\r\n")
	return strings.HasPrefix(t, "{") && json.Valid(raw)
}

// truncate keeps error messages short for long hostile values.
func truncate(s string) string {
	const n = 80
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// FormatError reports a manifest that breaks the format: the field, as a
// JSON path like "files[2].csum" (or "json" for the document's syntax), and
// what was wrong with it.
type FormatError struct {
	Field  string
	Reason string
	Err    error // ErrTooLarge for a limit, else nil
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("pbsmanifest: %s: %s", e.Field, e.Reason)
}

// Unwrap returns ErrTooLarge for a limit.
func (e *FormatError) Unwrap() error { return e.Err }

// ErrTooLarge is wrapped by the error for a manifest over MaxSize or with
// more than MaxFiles files.
var ErrTooLarge = errors.New("pbsmanifest: manifest too large")

func invalid(field, format string, args ...any) *FormatError {
	return &FormatError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
