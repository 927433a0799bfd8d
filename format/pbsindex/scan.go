package pbsindex

import (
	"fmt"
	"io"
)

// Kind says which index a file is.
type Kind int

// The index kinds.
const (
	KindFixed   Kind = 1 // .fidx
	KindDynamic Kind = 2 // .didx
)

// Scan streams the digests of a .fidx or .didx file (told apart by the
// magic) from r in index order, checking what ReadFixed and ReadDynamic
// check, but holding no entries: memory stays one 64 KiB buffer however
// large the file. It stops at the first error each returns and returns it
// unwrapped. maxEntries ≤ 0 means DefaultMaxEntries.
func Scan(r io.Reader, maxEntries int, each func(Digest) error) (Kind, error) {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	h := make([]byte, HeaderSize)
	if n, err := io.ReadFull(r, h); err != nil {
		return 0, readErr("index", 0, n, err, &FormatError{File: "index", Field: "header", Offset: 0,
			Reason: fmt.Sprintf("file is %d bytes, shorter than the %d-byte header", n, HeaderSize)})
	}
	switch string(h[offMagic : offMagic+len(FixedMagic)]) {
	case FixedMagic:
		return KindFixed, scanFixed(r, h, maxEntries, each)
	case DynamicMagic:
		return KindDynamic, scanDynamic(r, h, maxEntries, each)
	}
	return 0, &FormatError{File: "index", Field: "magic", Offset: offMagic,
		Reason: fmt.Sprintf("got %q, want %q or %q", h[offMagic:offMagic+len(FixedMagic)], FixedMagic, DynamicMagic)}
}

func scanFixed(r io.Reader, h []byte, maxEntries int, each func(Digest) error) error {
	f, slots, err := parseFixedHeader(h)
	if err != nil {
		return err
	}
	if slots > uint64(maxEntries) {
		return &FormatError{File: fixedFile, Field: "size", Offset: offSize, Err: ErrTooManyEntries,
			Reason: fmt.Sprintf("size %d in %d-byte slots needs %d digests, more than the limit %d", f.Size, f.ChunkSize, slots, maxEntries)}
	}
	buf := make([]byte, writeBatch/FixedEntrySize*FixedEntrySize)
	for done := uint64(0); done < slots; {
		k := min(slots-done, uint64(len(buf)/FixedEntrySize))
		off := int64(HeaderSize + done*FixedEntrySize)
		if n, err := io.ReadFull(r, buf[:k*FixedEntrySize]); err != nil {
			return readErr(fixedFile, off, n, err, wrongSlots(f, slots, fmt.Sprintf("ends %d bytes after the header", int(off)-HeaderSize+n)))
		}
		for j := range k {
			if err := each(Digest(buf[j*FixedEntrySize : (j+1)*FixedEntrySize])); err != nil {
				return err
			}
		}
		done += k
	}
	var one [1]byte
	if n, err := io.ReadFull(r, one[:]); n > 0 {
		return wrongSlots(f, slots, "continues after them")
	} else if err != io.EOF {
		return readErr(fixedFile, HeaderSize+int64(slots)*FixedEntrySize, 0, err, nil)
	}
	return nil
}

func scanDynamic(r io.Reader, h []byte, maxEntries int, each func(Digest) error) error {
	if _, err := parseHeader(h, dynamicFile, DynamicMagic, FixedMagic, dynamicUsed); err != nil {
		return err
	}
	var prev uint64
	n := 0
	buf := make([]byte, writeBatch/DynamicEntrySize*DynamicEntrySize)
	for {
		got, err := io.ReadFull(r, buf)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return readErr(dynamicFile, int64(HeaderSize+n*DynamicEntrySize), got, err, nil)
		}
		for i := 0; i+DynamicEntrySize <= got; i += DynamicEntrySize {
			if n >= maxEntries {
				return &FormatError{File: dynamicFile, Field: "entries", Offset: int64(HeaderSize + n*DynamicEntrySize),
					Err: ErrTooManyEntries, Reason: fmt.Sprintf("more than the limit of %d entries", maxEntries)}
			}
			end := le.Uint64(buf[i:])
			if end <= prev { // as Dynamic.add says it
				return &FormatError{File: dynamicFile, Field: fmt.Sprintf("entry %d end offset", n),
					Offset: int64(HeaderSize + n*DynamicEntrySize),
					Reason: fmt.Sprintf("%d does not exceed the previous end %d; chunks must be at least 1 byte", end, prev)}
			}
			prev = end
			if err := each(Digest(buf[i+8 : i+DynamicEntrySize])); err != nil {
				return err
			}
			n++
		}
		if rest := got % DynamicEntrySize; rest != 0 {
			return trailing(n, rest)
		}
		if err != nil { // the input ended
			return nil
		}
	}
}
