package pbsidx

// AppendFixed appends f's encoding to dst, its checksum computed.
func AppendFixed(dst []byte, f *Fixed) ([]byte, error) {
	slots, err := Slots(f.Size, f.ChunkSize)
	if err != nil || slots != uint64(len(f.Digests)) {
		return dst, formatErr(ErrInvalid, offSize, "%d digests for %d bytes in %d-byte slots", len(f.Digests), f.Size, f.ChunkSize)
	}
	h := make([]byte, HeaderSize)
	copy(h, FixedMagic[:])
	copy(h[offUUID:], f.UUID[:])
	le.PutUint64(h[offCTime:], uint64(f.CTime))
	sum := f.Csum()
	copy(h[offCsum:], sum[:])
	le.PutUint64(h[offSize:], f.Size)
	le.PutUint64(h[offChunkSize:], f.ChunkSize)
	dst = append(dst, h...)
	for _, d := range f.Digests {
		dst = append(dst, d[:]...)
	}
	return dst, nil
}

// AppendDynamic appends d's encoding to dst, its checksum computed.
func AppendDynamic(dst []byte, d *Dynamic) ([]byte, error) {
	if err := checkEnds(d.Entries); err != nil {
		return dst, err
	}
	h := make([]byte, HeaderSize)
	copy(h, DynamicMagic[:])
	copy(h[offUUID:], d.UUID[:])
	le.PutUint64(h[offCTime:], uint64(d.CTime))
	sum := d.Csum()
	copy(h[offCsum:], sum[:])
	dst = append(dst, h...)
	for _, e := range d.Entries {
		dst = le.AppendUint64(dst, e.End)
		dst = append(dst, e.Digest[:]...)
	}
	return dst, nil
}

func header(b []byte, magic [8]byte, used int) error {
	if len(b) < HeaderSize {
		return formatErr(ErrShort, 0, "%d bytes, shorter than the %d-byte header", len(b), HeaderSize)
	}
	if [8]byte(b) != magic {
		return formatErr(ErrBadMagic, 0, "% x", b[:8])
	}
	for i := used; i < HeaderSize; i++ {
		if b[i] != 0 {
			return formatErr(ErrInvalid, i, "the header's reserved bytes are not zero")
		}
	}
	return nil
}

// ParseFixed parses a fixed index of at most maxEntries slots (≤ 0: no
// limit beyond the input's size) and checks its checksum.
func ParseFixed(b []byte, maxEntries int) (*Fixed, error) {
	if err := header(b, FixedMagic, fixedUsed); err != nil {
		return nil, err
	}
	f := &Fixed{UUID: UUID(b[offUUID:]), CTime: int64(le.Uint64(b[offCTime:])), Size: le.Uint64(b[offSize:]), ChunkSize: le.Uint64(b[offChunkSize:])}
	slots, err := Slots(f.Size, f.ChunkSize)
	if err != nil {
		return nil, formatErr(ErrInvalid, offChunkSize, "chunk size 0")
	}
	body := b[HeaderSize:]
	if len(body)%FixedEntrySize != 0 || uint64(len(body)/FixedEntrySize) != slots {
		return nil, formatErr(ErrInvalid, HeaderSize, "%d entry bytes for %d slots of %d bytes in a %d-byte image", len(body), slots, f.ChunkSize, f.Size)
	}
	if maxEntries > 0 && slots > uint64(maxEntries) {
		return nil, formatErr(ErrTooLarge, HeaderSize, "%d slots, at most %d", slots, maxEntries)
	}
	f.Digests = make([]Digest, slots)
	for i := range f.Digests {
		f.Digests[i] = Digest(body[i*FixedEntrySize:])
	}
	if f.Csum() != [32]byte(b[offCsum:]) {
		return nil, formatErr(ErrCsum, offCsum, "the header's checksum is not that of the digests")
	}
	return f, nil
}

// ParseDynamic parses a dynamic index of at most maxEntries entries (≤ 0:
// no limit beyond the input's size) and checks its checksum and that end
// offsets grow.
func ParseDynamic(b []byte, maxEntries int) (*Dynamic, error) {
	if err := header(b, DynamicMagic, dynamicUsed); err != nil {
		return nil, err
	}
	body := b[HeaderSize:]
	if len(body)%DynamicEntrySize != 0 {
		return nil, formatErr(ErrInvalid, HeaderSize, "%d entry bytes are not whole %d-byte entries", len(body), DynamicEntrySize)
	}
	n := len(body) / DynamicEntrySize
	if maxEntries > 0 && n > maxEntries {
		return nil, formatErr(ErrTooLarge, HeaderSize, "%d entries, at most %d", n, maxEntries)
	}
	d := &Dynamic{UUID: UUID(b[offUUID:]), CTime: int64(le.Uint64(b[offCTime:])), Entries: make([]DynamicEntry, n)}
	for i := range d.Entries {
		rec := body[i*DynamicEntrySize:]
		d.Entries[i] = DynamicEntry{End: le.Uint64(rec), Digest: Digest(rec[8:])}
	}
	if err := checkEnds(d.Entries); err != nil {
		return nil, err
	}
	if d.Csum() != [32]byte(b[offCsum:]) {
		return nil, formatErr(ErrCsum, offCsum, "the header's checksum is not that of the entries")
	}
	return d, nil
}

// checkEnds checks that every chunk ends after the one before it, so no
// chunk but a first one is empty.
func checkEnds(entries []DynamicEntry) error {
	var prev uint64
	for i, e := range entries {
		if e.End <= prev && !(i == 0 && e.End == 0) {
			return formatErr(ErrInvalid, HeaderSize+i*DynamicEntrySize, "entry %d ends at %d, not after %d", i, e.End, prev)
		}
		prev = e.End
	}
	return nil
}
