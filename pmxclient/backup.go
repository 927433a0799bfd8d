package pmxclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/chunker"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// Chunk sizes of a backup.
const (
	// DefaultFixedChunkSize is the block size of a fixed (image) backup.
	DefaultFixedChunkSize = 4 << 20
	// DynamicMin, DynamicAvg and DynamicMax are the dynamic chunker's
	// sizes: casync's defaults, so that `casync make --digest=sha256` cuts
	// the same bytes into the same chunks (DESIGN §7).
	DynamicMin = 16 << 10
	DynamicAvg = 64 << 10
	DynamicMax = 256 << 10
	// DefaultReadAhead bounds the chunk data read but not yet sent.
	DefaultReadAhead = 64 << 20
)

// BackupOptions describes one backup: one input, one snapshot file.
type BackupOptions struct {
	// Type and ID name the backup group: vm, ct or host, and the backup
	// id ([A-Za-z0-9][A-Za-z0-9_.-]*).
	Type pmxproto.BackupType
	ID   string
	// Name is the file name in the snapshot, without .fidx/.didx, which
	// the server appends; no "/".
	Name string
	// Fixed cuts the input into ChunkSize blocks (an image, .fidx) instead
	// of content-defined chunks (an archive or stream, .didx).
	Fixed bool
	// ChunkSize is the block size of a fixed backup, 1..format.MaxChunk;
	// 0 means DefaultFixedChunkSize. Unused for dynamic backups.
	ChunkSize int
	// Input is read once, to its end.
	Input io.Reader
	// Size is the input's size in bytes, or -1 if unknown. A fixed backup
	// needs it (the index records it) and fails if the input is shorter or
	// longer; a dynamic backup uses it for progress only.
	Size int64
	// Time is the snapshot time; zero means now. Two backups of one
	// backup id in the same second collide: the snapshot already exists.
	// The files of one snapshot share its time: give them all the same.
	Time time.Time
	// AddToSnapshot adds the file to the snapshot at Time, new or not
	// (CreateBackup without EXCL): how the second and later files of a
	// snapshot are written. The server still refuses a file the snapshot
	// has. Unset, the snapshot must be new (EXCL), so that a backup never
	// mixes its files into an older run's snapshot by accident.
	AddToSnapshot bool
	// Known, if not nil, is shared by the backups of one run on one
	// connection (the files of a snapshot): a chunk one of them uploaded,
	// or found in its previous snapshot, is not sent again by the next.
	// Backup adds to it. Nil means a set of this backup's own.
	Known map[Digest]struct{}
	// Progress, if set, is called from Backup's goroutine at most every
	// ProgressInterval, and once at the end.
	Progress func(Stats)
	// ReadAhead bounds the chunk data read ahead of the upload, in bytes;
	// 0 means DefaultReadAhead. At least one maximum-size chunk is used.
	ReadAhead int64
}

// ProgressInterval is the least time between two Progress calls.
const ProgressInterval = 200 * time.Millisecond

// Backup reads opts.Input, chunks it, and stores it as a new snapshot file:
// fixed blocks or casync's content-defined chunks, SHA-256 ids.
//
// It is incremental: it first asks for the hash list of the newest snapshot
// of the same file ("<type>/<id>/latest/<name>.fidx|.didx") and uploads
// only chunks that list does not have and that were not uploaded earlier in
// this run; without a previous snapshot it uploads every chunk. Uploads are
// pipelined and hashing runs in parallel; memory stays bounded by
// ReadAhead, never the input's size.
//
// On error nothing is published, but the server still holds the open file:
// close the Client, which discards it. If ctx ends while a read of the input
// blocks, Backup returns at once and that read finishes in the background;
// do not use the input afterwards.
func Backup(ctx context.Context, c *Client, opts BackupOptions) (*BackupSummary, error) {
	start := time.Now()
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	ext := ".didx"
	if opts.Fixed {
		ext = ".fidx"
	}
	src, maxChunk, err := opts.source()
	if err != nil {
		return nil, err
	}
	sum := &BackupSummary{Base: fmt.Sprintf("%s/%s/latest/%s%s", opts.Type, opts.ID, opts.Name, ext)}
	known, err := c.HashList(ctx, sum.Base)
	switch {
	case errors.Is(err, ErrNotFound):
		sum.Base = "" // first backup of this file: upload everything
	case err != nil:
		return nil, fmt.Errorf("pmx: backup: reading the previous snapshot's digests: %w", err)
	}
	sum.BaseChunks = len(known)
	set := opts.Known
	if set == nil {
		set = make(map[Digest]struct{}, len(known))
	}
	sum.sharedKnown = len(set)
	for _, d := range known {
		set[d] = struct{}{}
	}
	known = nil

	spec := BackupSpec{Type: opts.Type, ID: opts.ID, Name: opts.Name, Time: opts.Time, Fixed: opts.Fixed, Exclusive: !opts.AddToSnapshot}
	if opts.Fixed {
		spec.ChunkSize, spec.FileSize = uint32(opts.ChunkSize), uint64(opts.Size)
	} else {
		spec.ChunkSize = DynamicAvg
	}
	stream, err := c.CreateBackup(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("pmx: backup: %w", err)
	}
	r := &backupRun{
		c: c, stream: stream, uploads: c.NewUploads(), known: set, fixed: opts.Fixed,
		progress: opts.Progress, start: start,
		stats: Stats{Total: opts.Size},
	}
	if !opts.Fixed && opts.Size < 0 {
		r.stats.Total = -1
	}
	if err := r.pipeline(ctx, src, maxChunk, opts.ReadAhead); err != nil {
		return nil, fmt.Errorf("pmx: backup to %s: %w", stream.Path(), err)
	}
	if err := r.uploads.Wait(ctx); err != nil {
		return nil, fmt.Errorf("pmx: backup to %s: %w", stream.Path(), err)
	}
	path, err := stream.Finish(ctx)
	if err != nil {
		return nil, fmt.Errorf("pmx: backup to %s: %w", stream.Path(), err)
	}
	r.report(true)
	r.stats.Elapsed = time.Since(start)
	sum.Path = path
	sum.Stats = r.stats
	return sum, nil
}

func (o *BackupOptions) normalize() error {
	if o.Input == nil {
		return errors.New("pmx: backup: no input")
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = DefaultReadAhead
	}
	if !o.Fixed {
		return nil
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = DefaultFixedChunkSize
	}
	if o.ChunkSize < 1 || o.ChunkSize > format.MaxChunk {
		return fmt.Errorf("pmx: backup: chunk size %d; want 1..%d (the largest chunk every protocol can restore)", o.ChunkSize, format.MaxChunk)
	}
	if o.Size < 0 {
		return errors.New("pmx: backup: a fixed backup needs the input's size, which goes into the index; " +
			"back up a file or device rather than a stream, or make a dynamic backup")
	}
	return nil
}

// source returns the chunk source and its largest chunk.
func (o *BackupOptions) source() (chunkSource, int, error) {
	if o.Fixed {
		return &fixedSource{r: o.Input, size: o.Size, chunk: o.ChunkSize}, o.ChunkSize, nil
	}
	ch, err := chunker.New(o.Input, DynamicMin, DynamicAvg, DynamicMax)
	if err != nil {
		return nil, 0, fmt.Errorf("pmx: backup: %w", err)
	}
	return dynamicSource{ch}, DynamicMax, nil
}

// chunkSource cuts the input into chunks.
type chunkSource interface {
	// next reads the next chunk into buf (whose capacity is the largest
	// chunk) and returns it, or io.EOF after the last one.
	next(buf []byte) ([]byte, error)
}

// fixedSource reads blocks of exactly chunk bytes, the last one shorter,
// and checks that the input has exactly size bytes.
type fixedSource struct {
	r          io.Reader
	size, read int64
	chunk      int
}

func (s *fixedSource) next(buf []byte) ([]byte, error) {
	if s.read == s.size {
		var one [1]byte
		n, err := io.ReadFull(s.r, one[:])
		switch {
		case n > 0:
			return nil, fmt.Errorf("the input is longer than its size, %d bytes (did it grow during the backup?)", s.size)
		case err == io.EOF:
			return nil, io.EOF
		}
		return nil, fmt.Errorf("reading the input at offset %d: %w", s.read, err)
	}
	n := int(min(int64(s.chunk), s.size-s.read))
	m, err := io.ReadFull(s.r, buf[:n])
	s.read += int64(m)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return nil, fmt.Errorf("the input ended after %d bytes, but its size is %d (did it shrink during the backup?)", s.read, s.size)
	case err != nil:
		return nil, fmt.Errorf("reading the input at offset %d: %w", s.read, err)
	}
	return buf[:n], nil
}

// dynamicSource copies the chunker's chunks out of its buffer.
type dynamicSource struct{ ch *chunker.Chunker }

func (s dynamicSource) next(buf []byte) ([]byte, error) {
	data, err := s.ch.Next()
	if err != nil {
		return nil, err
	}
	return append(buf[:0], data...), nil
}
