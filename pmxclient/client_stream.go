package pmxclient

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// BackupSpec describes a snapshot file to create.
type BackupSpec struct {
	// Type is the guest kind: vm, ct or host.
	Type pmxproto.BackupType
	// ID is the backup id, [A-Za-z0-9][A-Za-z0-9_.-]*.
	ID string
	// Name is the file name without .fidx/.didx, which the server appends;
	// no "/".
	Name string
	// Time is the snapshot time, whole seconds; zero means now.
	Time time.Time
	// Fixed selects a fixed index (an image cut in ChunkSize blocks)
	// rather than a dynamic one.
	Fixed bool
	// ChunkSize is the block size of a fixed index, 1..format.MaxChunk (the server refuses more);
	// for a dynamic index the chunker's average size, for information.
	ChunkSize uint32
	// FileSize is the image size of a fixed index; 0 for a dynamic one.
	FileSize uint64
	// Exclusive makes the server refuse the file if the snapshot exists.
	Exclusive bool
}

// Stream is an open snapshot file: its entries are sent with Fixed or
// Dynamic, and Finish publishes it. A Stream is not safe for concurrent
// use, except that Err may be called at any time.
type Stream struct {
	c    *Client
	id   uint8
	path string
	h    *streamHandler
}

// CreateBackup opens a snapshot file and waits for BackupCreated. The
// stream keeps its id until Finish succeeds; a file abandoned without
// Finish is discarded by the server when the connection ends, so close the
// Client after a failed backup.
func (c *Client) CreateBackup(ctx context.Context, spec BackupSpec) (*Stream, error) {
	t := spec.Time
	if t.IsZero() {
		t = time.Now()
	}
	if t.Unix() < 0 {
		return nil, fmt.Errorf("pmx: create backup %s/%s: time %s is before 1970", spec.Type, spec.ID, t)
	}
	flags := pmxproto.Flags(0)
	if spec.Exclusive {
		flags |= pmxproto.FlagExcl
	}
	if !spec.Fixed {
		flags |= pmxproto.FlagDynamicChunks
	}
	what := fmt.Sprintf("CreateBackup of %s/%s/%s", spec.Type, spec.ID, spec.Name)
	h := &streamHandler{what: what, created: make(chan createdResult, 1)}
	id, err := c.request(ctx, h, func(id uint8) pmxproto.Packet {
		return &pmxproto.CreateBackup{
			ID: id, BackupType: spec.Type, Timestamp: uint64(t.Unix()), Flags: flags,
			ChunkSize: spec.ChunkSize, FileSize: spec.FileSize, BackupID: spec.ID, Name: spec.Name,
		}
	})
	if err != nil {
		return nil, fmt.Errorf("pmx: %s: %w", what, err)
	}
	res, err := wait(ctx, c, h.created)
	if err != nil {
		// The answer may still come; the reader takes it, and the id
		// stays with the handler.
		return nil, fmt.Errorf("pmx: %s: %w", what, err)
	}
	if res.err != nil {
		return nil, res.err
	}
	return &Stream{c: c, id: id, path: res.path, h: h}, nil
}

// Path returns the file's store-relative path exactly as the server's
// BackupCreated named it.
func (s *Stream) Path() string { return s.path }

// Err returns the first error the server reported for this file (a refused
// entry), or nil.
func (s *Stream) Err() error { return s.h.error() }

// Fixed sets slot (block number) of a fixed index to digest. It buffers the
// entry and returns without waiting: a refused entry is reported by a later
// call, by Err and by Finish. The chunk must be stored, or uploaded on this
// connection before this call.
func (s *Stream) Fixed(ctx context.Context, slot uint64, digest Digest) error {
	if err := s.h.error(); err != nil {
		return err
	}
	p := &pmxproto.BackupDataFixed{ID: s.id, Entries: []pmxproto.FixedEntry{{Index: slot, Digest: digest}}}
	if err := s.c.send(ctx, p, false); err != nil {
		return fmt.Errorf("pmx: %s: slot %d: %w", s.path, slot, err)
	}
	return nil
}

// Dynamic appends the chunk that starts at byte offset of the file to a
// dynamic index; entries must be contiguous. Like Fixed, it does not wait.
func (s *Stream) Dynamic(ctx context.Context, offset uint64, digest Digest) error {
	if err := s.h.error(); err != nil {
		return err
	}
	p := &pmxproto.BackupDataDynamic{ID: s.id, Entries: []pmxproto.DynamicEntry{{Offset: offset, Digest: digest}}}
	if err := s.c.send(ctx, p, false); err != nil {
		return fmt.Errorf("pmx: %s: chunk at offset %d: %w", s.path, offset, err)
	}
	return nil
}

// Finish sends BackupFinished and waits until the server has published the
// file. It returns the file's path, or the first refusal of an entry or of
// the file itself. After a refused entry the file can never be published.
func (s *Stream) Finish(ctx context.Context) (string, error) {
	s.h.mu.Lock()
	refused, already := s.h.err, s.h.finished != nil
	if !already {
		s.h.finished = make(chan error, 1)
	}
	finished := s.h.finished
	s.h.mu.Unlock()
	if already {
		return "", fmt.Errorf("pmx: %s: Finish called twice", s.path)
	}
	// Send BackupFinished even after a refusal, so the server drops the
	// file now rather than at the end of the connection.
	if err := s.c.send(ctx, &pmxproto.BackupFinished{ID: s.id}, true); err != nil {
		return "", fmt.Errorf("pmx: finishing %s: %w", s.path, err)
	}
	if refused != nil {
		return "", refused
	}
	err, werr := wait(ctx, s.c, finished)
	if werr != nil {
		return "", fmt.Errorf("pmx: finishing %s: %w", s.path, werr)
	}
	if err != nil {
		return "", err
	}
	return s.path, nil
}

type createdResult struct {
	path string
	err  error
}

// streamHandler follows a file stream: BackupCreated or Error, then Errors
// for refused entries, then Ok or Error for BackupFinished.
//
// An Error after BackupCreated retires the id: entries are not answered,
// so when BackupFinished is answered with Error, more Errors for entries
// sent before it may or may not follow, and the id could not be reused
// safely.
type streamHandler struct {
	what    string
	created chan createdResult // buffered; written once
	path    string             // set on BackupCreated

	mu       sync.Mutex
	err      error      // first refusal after BackupCreated
	finished chan error // set by Finish; buffered; written once
	answered bool       // finished has been written
}

func (h *streamHandler) error() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

func (h *streamHandler) deliver(p pmxproto.Packet) (disposition, error) {
	if h.path == "" {
		switch p := p.(type) {
		case *pmxproto.BackupCreated:
			h.path = p.Path
			h.created <- createdResult{path: p.Path}
			return keep, nil
		case *pmxproto.Error:
			h.created <- createdResult{err: serverError(h.what, p)}
			return release, nil
		}
		return keep, unexpected(h.what, p)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch p := p.(type) {
	case *pmxproto.Ok:
		if h.finished == nil || h.err != nil {
			return keep, unexpected("backup file "+h.path+" (not finished yet)", p)
		}
		h.answer(nil)
		return release, nil
	case *pmxproto.Error:
		se := serverError("backup file "+h.path, p)
		if h.err == nil {
			h.err = se
		}
		if h.finished != nil {
			h.answer(h.err)
		}
		return retire, nil
	}
	return keep, unexpected("backup file "+h.path, p)
}

// answer reports Finish's result once; h.mu is held.
func (h *streamHandler) answer(err error) {
	if !h.answered {
		h.answered = true
		h.finished <- err
	}
}

func (h *streamHandler) fail(err error) {
	if h.path == "" {
		h.created <- createdResult{err: fmt.Errorf("pmx: %s: %w", h.what, err)}
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = fmt.Errorf("pmx: backup file %s: connection ended before it was finished: %w", h.path, err)
	}
	if h.finished != nil {
		h.answer(h.err)
	}
}
