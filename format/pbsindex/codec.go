package pbsindex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var le = binary.LittleEndian

// writeBatch is how many bytes the writers hand to w at a time.
const writeBatch = 64 << 10

const (
	fixedFile   = "fixed index"
	dynamicFile = "dynamic index"
)

// WriteFixed writes f as a .fidx file: the header, then one digest per slot.
// It refuses an index that fails Validate, before writing anything.
func WriteFixed(w io.Writer, f *Fixed) error {
	if err := f.Validate(); err != nil {
		return err
	}
	buf := make([]byte, HeaderSize, HeaderSize+min(len(f.Digests)*FixedEntrySize, writeBatch))
	putHeader(buf, FixedMagic, f.UUID, f.CTime)
	le.PutUint64(buf[offSize:], f.Size)
	le.PutUint64(buf[offChunkSize:], f.ChunkSize)
	for i := range f.Digests {
		if len(buf)+FixedEntrySize > cap(buf) {
			if err := write(w, buf, fixedFile); err != nil {
				return err
			}
			buf = buf[:0]
		}
		buf = append(buf, f.Digests[i][:]...)
	}
	return write(w, buf, fixedFile)
}

// WriteDynamic writes d as a .didx file: the header, then (end offset,
// digest) per chunk. It refuses an index that fails Validate, before writing
// anything.
func WriteDynamic(w io.Writer, d *Dynamic) error {
	if err := d.Validate(); err != nil {
		return err
	}
	buf := make([]byte, HeaderSize, HeaderSize+min(len(d.Entries)*DynamicEntrySize, writeBatch))
	putHeader(buf, DynamicMagic, d.UUID, d.CTime)
	for i := range d.Entries {
		if len(buf)+DynamicEntrySize > cap(buf) {
			if err := write(w, buf, dynamicFile); err != nil {
				return err
			}
			buf = buf[:0]
		}
		buf = le.AppendUint64(buf, d.Entries[i].End)
		buf = append(buf, d.Entries[i].Digest[:]...)
	}
	return write(w, buf, dynamicFile)
}

func putHeader(h []byte, magic string, u UUID, ctime uint64) {
	copy(h[offMagic:], magic)
	le.PutUint32(h[offVersion:], Version)
	copy(h[offUUID:], u[:])
	le.PutUint64(h[offCTime:], ctime)
}

func write(w io.Writer, b []byte, file string) error {
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("pbsindex: writing %s: %w", file, err)
	}
	return nil
}

// header is what both headers share.
type header struct {
	uuid  UUID
	ctime uint64
}

// parseHeader checks a whole 4096-byte header: magic, version, and zero
// padding after the used bytes.
func parseHeader(h []byte, file, magic, other string, used int) (header, error) {
	if got := string(h[offMagic : offMagic+len(magic)]); got != magic {
		reason := fmt.Sprintf("got %q, want %q", got, magic)
		if got == other {
			reason += " (this is the other index kind)"
		}
		return header{}, &FormatError{File: file, Field: "magic", Offset: offMagic, Reason: reason}
	}
	if v := le.Uint32(h[offVersion:]); v != Version {
		return header{}, &FormatError{File: file, Field: "version", Offset: offVersion, Reason: fmt.Sprintf("%d, want %d", v, Version)}
	}
	for i := used; i < HeaderSize; i++ {
		if h[i] != 0 {
			return header{}, &FormatError{File: file, Field: "reserved", Offset: int64(i), Reason: fmt.Sprintf("byte 0x%02x, want 0", h[i])}
		}
	}
	var hd header
	copy(hd.uuid[:], h[offUUID:])
	hd.ctime = le.Uint64(h[offCTime:])
	return hd, nil
}

func shortHeader(file string, n int) error {
	return &FormatError{File: file, Field: "header", Offset: 0,
		Reason: fmt.Sprintf("file is %d bytes, shorter than the %d-byte header", n, HeaderSize)}
}

// parseFixedHeader returns the header fields and the number of slots.
func parseFixedHeader(h []byte) (*Fixed, uint64, error) {
	hd, err := parseHeader(h, fixedFile, FixedMagic, DynamicMagic, fixedUsed)
	if err != nil {
		return nil, 0, err
	}
	f := &Fixed{UUID: hd.uuid, CTime: hd.ctime, Size: le.Uint64(h[offSize:]), ChunkSize: le.Uint64(h[offChunkSize:])}
	slots, err := FixedSlots(f.Size, f.ChunkSize)
	if err != nil {
		return nil, 0, &FormatError{File: fixedFile, Field: "chunk_size", Offset: offChunkSize, Reason: "is 0, want at least 1"}
	}
	return f, slots, nil
}

func wrongSlots(f *Fixed, slots uint64, have string) error {
	return &FormatError{File: fixedFile, Field: "size", Offset: offSize,
		Reason: fmt.Sprintf("size %d in %d-byte slots needs %d digests, but the file %s", f.Size, f.ChunkSize, slots, have)}
}

// ParseFixed decodes a whole .fidx file. The file size must be exactly the
// header plus one digest per slot. It allocates no more than len(b).
func ParseFixed(b []byte) (*Fixed, error) {
	if len(b) < HeaderSize {
		return nil, shortHeader(fixedFile, len(b))
	}
	f, slots, err := parseFixedHeader(b[:HeaderSize])
	if err != nil {
		return nil, err
	}
	body := b[HeaderSize:]
	if have := uint64(len(body) / FixedEntrySize); len(body)%FixedEntrySize != 0 || have != slots {
		return nil, wrongSlots(f, slots, fmt.Sprintf("has %d bytes after the header", len(body)))
	}
	f.Digests = make([]Digest, slots)
	for i := range f.Digests {
		copy(f.Digests[i][:], body[i*FixedEntrySize:])
	}
	return f, nil
}

// ParseDynamic decodes a whole .didx file: entries must fill the file after
// the header exactly, and end offsets strictly increase from above 0. It
// allocates no more than len(b).
func ParseDynamic(b []byte) (*Dynamic, error) {
	if len(b) < HeaderSize {
		return nil, shortHeader(dynamicFile, len(b))
	}
	hd, err := parseHeader(b[:HeaderSize], dynamicFile, DynamicMagic, FixedMagic, dynamicUsed)
	if err != nil {
		return nil, err
	}
	body := b[HeaderSize:]
	whole := len(body) / DynamicEntrySize
	d := &Dynamic{UUID: hd.uuid, CTime: hd.ctime, Entries: make([]DynamicEntry, 0, whole)}
	for i := range whole {
		if err := d.add(body[i*DynamicEntrySize : (i+1)*DynamicEntrySize]); err != nil {
			return nil, err
		}
	}
	if rest := len(body) % DynamicEntrySize; rest != 0 {
		return nil, trailing(whole, rest)
	}
	return d, nil
}

func trailing(entries, rest int) error {
	return &FormatError{File: dynamicFile, Field: "entries", Offset: int64(HeaderSize + entries*DynamicEntrySize),
		Reason: fmt.Sprintf("%d bytes after entry %d, not a whole %d-byte entry", rest, entries, DynamicEntrySize)}
}

// add appends one 40-byte record, checking its end offset.
func (d *Dynamic) add(rec []byte) error {
	e := DynamicEntry{End: le.Uint64(rec)}
	copy(e.Digest[:], rec[8:])
	var prev uint64
	if n := len(d.Entries); n > 0 {
		prev = d.Entries[n-1].End
	}
	if e.End <= prev {
		i := len(d.Entries)
		return &FormatError{File: dynamicFile, Field: fmt.Sprintf("entry %d end offset", i),
			Offset: int64(HeaderSize + i*DynamicEntrySize),
			Reason: fmt.Sprintf("%d does not exceed the previous end %d; chunks must be at least 1 byte", e.End, prev)}
	}
	d.Entries = append(d.Entries, e)
	return nil
}

// ReadFixed decodes a .fidx file from r, which must end right after the
// last digest. It refuses, before allocating them, more than maxEntries
// slots (DefaultMaxEntries if maxEntries ≤ 0), wrapping ErrTooManyEntries.
func ReadFixed(r io.Reader, maxEntries int) (*Fixed, error) {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	h := make([]byte, HeaderSize)
	if n, err := io.ReadFull(r, h); err != nil {
		return nil, readErr(fixedFile, 0, n, err, shortHeader(fixedFile, n))
	}
	f, slots, err := parseFixedHeader(h)
	if err != nil {
		return nil, err
	}
	if slots > uint64(maxEntries) {
		return nil, &FormatError{File: fixedFile, Field: "size", Offset: offSize, Err: ErrTooManyEntries,
			Reason: fmt.Sprintf("size %d in %d-byte slots needs %d digests, more than the limit %d", f.Size, f.ChunkSize, slots, maxEntries)}
	}
	f.Digests = make([]Digest, slots)
	buf := h[:min(len(h), int(slots)*FixedEntrySize)] // the header's buffer, reused
	for i := 0; i < len(f.Digests); {
		k := min(len(f.Digests)-i, len(buf)/FixedEntrySize)
		off := int64(HeaderSize + i*FixedEntrySize)
		if n, err := io.ReadFull(r, buf[:k*FixedEntrySize]); err != nil {
			return nil, readErr(fixedFile, off, n, err, wrongSlots(f, slots, fmt.Sprintf("ends %d bytes after the header", int(off)-HeaderSize+n)))
		}
		for j := range k {
			copy(f.Digests[i+j][:], buf[j*FixedEntrySize:])
		}
		i += k
	}
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return nil, wrongSlots(f, slots, "continues after them")
	} else if err != io.EOF {
		return nil, readErr(fixedFile, HeaderSize+int64(slots)*FixedEntrySize, 0, err, nil)
	}
	return f, nil
}

// ReadDynamic decodes a .didx file from r. It refuses more than maxEntries
// entries (DefaultMaxEntries if maxEntries ≤ 0), wrapping ErrTooManyEntries;
// memory grows with the entries read, never past that limit.
func ReadDynamic(r io.Reader, maxEntries int) (*Dynamic, error) {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	h := make([]byte, HeaderSize)
	if n, err := io.ReadFull(r, h); err != nil {
		return nil, readErr(dynamicFile, 0, n, err, shortHeader(dynamicFile, n))
	}
	hd, err := parseHeader(h, dynamicFile, DynamicMagic, FixedMagic, dynamicUsed)
	if err != nil {
		return nil, err
	}
	d := &Dynamic{UUID: hd.uuid, CTime: hd.ctime, Entries: []DynamicEntry{}}
	// The batch starts small, for small files, and doubles to writeBatch.
	buf := make([]byte, 64*DynamicEntrySize)
	for {
		n, err := io.ReadFull(r, buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return nil, readErr(dynamicFile, int64(HeaderSize+len(d.Entries)*DynamicEntrySize), n, err, nil)
		}
		for i := 0; i+DynamicEntrySize <= n; i += DynamicEntrySize {
			if len(d.Entries) >= maxEntries {
				return nil, &FormatError{File: dynamicFile, Field: "entries", Offset: int64(HeaderSize + len(d.Entries)*DynamicEntrySize),
					Err: ErrTooManyEntries, Reason: fmt.Sprintf("more than the limit of %d entries", maxEntries)}
			}
			if err := d.add(buf[i : i+DynamicEntrySize]); err != nil {
				return nil, err
			}
		}
		if rest := n % DynamicEntrySize; rest != 0 {
			return nil, trailing(len(d.Entries), rest)
		}
		if err != nil { // the input ended
			return d, nil
		}
		if len(buf) < writeBatch {
			buf = make([]byte, min(2*len(buf), writeBatch/DynamicEntrySize*DynamicEntrySize))
		}
	}
}

// readErr maps a read failure at file offset off (n bytes into the read):
// the input ending early becomes short, anything else a wrapped I/O error.
func readErr(file string, off int64, n int, err error, short error) error {
	if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && short != nil {
		return short
	}
	return fmt.Errorf("pbsindex: reading %s at offset %d: %w", file, off+int64(n), err)
}
