package catalog

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Snapshot paths are [ns/<a>/ns/<b>/…]<type>/<backup id>/<UTC time>/<file>.fidx|.didx
// under snapshots/ in the store (namespace.go).
const (
	snapshotTimeLayout = "2006-01-02T15:04:05Z"
	// maxChunkSize is the largest fixed chunk: DESIGN §7.5 says 16 MiB − 38
	// (what fits an UploadChunk packet), but it must also fit every
	// protocol's download (format.MaxChunk).
	maxChunkSize = format.MaxChunk
	// maxEntries bounds one snapshot file (kept in memory while written):
	// 16 Mi entries, 64 TiB of image at 4 MiB or 1 TiB of stream at 64 KiB.
	maxEntries = pbsindex.DefaultMaxEntries
	// maxAhead bounds the fixed slots filled ahead of the first unfilled
	// one (about 100 bytes each while they wait): 96 MiB at most.
	maxAhead = 1 << 20
	// entryBatch is how many entries are checked against the store at once.
	entryBatch = 4096
	// latest stands for the newest snapshot in a path given to
	// ReadSnapshotDigests: host/web-01/latest/root.pxar.didx.
	latest = "latest"
	// Metadata of snapshot files.
	metaFixed     = "fixed"
	metaChunkSize = "chunk-size"
	// metaEncrypted marks a file whose chunks are in the encrypted space.
	metaEncrypted = "encrypted"
)

var (
	backupIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	backupTypes     = map[string]bool{"vm": true, "ct": true, "host": true}
	sortedTypes     = []string{"ct", "host", "vm"}
)

func checkType(t string) error {
	if !backupTypes[t] {
		return fmt.Errorf("%w: backup type %q: want vm, ct or host", apierr.ErrInvalid, t)
	}
	return nil
}

func checkBackupID(id string) error {
	if len(id) > 255 || !backupIDPattern.MatchString(id) {
		return fmt.Errorf("%w: backup id %q: want [A-Za-z0-9][A-Za-z0-9_.-]*, at most 255 bytes", apierr.ErrInvalid, id)
	}
	return nil
}

func checkFileName(name string) error {
	if name == "" || len(name) > 255 || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
		return fmt.Errorf("%w: file name %q: want 1 to 255 bytes without \"/\"", apierr.ErrInvalid, name)
	}
	for _, c := range []byte(name) {
		if c < 0x20 {
			return fmt.Errorf("%w: file name %q contains a control character", apierr.ErrInvalid, name)
		}
	}
	return nil
}

// snapshotPath is a parsed [ns/<a>/…]<type>/<id>/<time>/<file> path.
type snapshotPath struct {
	ns, typ, id, time, file string
}

func (p snapshotPath) group() string  { return nsDir(p.ns) + p.typ + "/" + p.id }
func (p snapshotPath) dir() string    { return p.group() + "/" + p.time }
func (p snapshotPath) String() string { return p.dir() + "/" + p.file }
func (p snapshotPath) key() string    { return snapshotPrefix + p.String() }

// parseSnapshotPath checks a store-relative snapshot file path. The time
// may be "latest" when allowLatest is set.
func parseSnapshotPath(path string, allowLatest bool) (snapshotPath, error) {
	ns, parts, err := splitNamespace(strings.Split(strings.TrimPrefix(path, "/"), "/"))
	if err != nil {
		return snapshotPath{}, fmt.Errorf("snapshot path %q: %w", path, err)
	}
	if len(parts) != 4 {
		return snapshotPath{}, fmt.Errorf("%w: snapshot path %q: want [ns/<namespace>/…]<type>/<id>/<time>/<file>", apierr.ErrInvalid, path)
	}
	p := snapshotPath{ns, parts[0], parts[1], parts[2], parts[3]}
	if err := errors.Join(checkType(p.typ), checkBackupID(p.id), checkFileName(p.file)); err != nil {
		return p, err
	}
	if !strings.HasSuffix(p.file, ".fidx") && !strings.HasSuffix(p.file, ".didx") {
		return p, fmt.Errorf("%w: snapshot file %q: want a .fidx or .didx name", apierr.ErrInvalid, p.file)
	}
	if p.time == latest && allowLatest {
		return p, nil
	}
	if _, err := time.Parse(snapshotTimeLayout, p.time); err != nil {
		return p, fmt.Errorf("%w: snapshot time %q: want RFC 3339 UTC like 2019-03-06T09:06:52Z", apierr.ErrInvalid, p.time)
	}
	return p, nil
}

// snapshotWriter accumulates one snapshot file.
type snapshotWriter struct {
	s      *Server
	create *chunkbridgev1.WriteSnapshotFileRequest_Create
	path   snapshotPath
	// fixed holds the slots filled so far in order (Digests grows as
	// entries arrive: the size field announced in Create allocates
	// nothing); slots filled ahead of that wait in sparse until the gap
	// closes, at most maxAhead of them. Memory follows the entries a
	// client sent, not the size it claims.
	fixed   *pbsindex.Fixed
	slots   int64
	sparse  map[int64]pbsindex.Digest
	dynamic *pbsindex.Dynamic
	pending []*chunkbridgev1.WriteSnapshotFileRequest_Entry
	refused int
	ticket  gcguard.Ticket // taken before the first entry was checked
	send    func(*chunkbridgev1.WriteSnapshotFileResponse) error
}

// WriteSnapshotFile implements the Create, Entries…, Commit conversation.
func (s *Server) WriteSnapshotFile(stream grpc.BidiStreamingServer[chunkbridgev1.WriteSnapshotFileRequest, chunkbridgev1.WriteSnapshotFileResponse]) error {
	ctx := stream.Context()
	if err := auth.Check(ctx, auth.Append, "snapshots"); err != nil {
		return apierr.Status(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return apierr.Status(fmt.Errorf("write snapshot file: %w", err))
	}
	create := first.GetCreate()
	if create == nil {
		return apierr.Status(fmt.Errorf("%w: write snapshot file: the first message must be Create", apierr.ErrInvalid))
	}
	w, err := s.newSnapshotWriter(ctx, create)
	if err != nil {
		return apierr.Status(err)
	}
	w.send = stream.Send
	if err := stream.Send(&chunkbridgev1.WriteSnapshotFileResponse{Step: &chunkbridgev1.WriteSnapshotFileResponse_Created_{
		Created: &chunkbridgev1.WriteSnapshotFileResponse_Created{Path: w.path.String(), Time: timestamppb.New(mustTime(w.path.time))},
	}}); err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// No Commit: the file is abandoned and nothing is visible.
			return apierr.Status(fmt.Errorf("%w: snapshot file %s: stream ended without Commit; nothing was published", apierr.ErrInvalid, w.path))
		}
		if err != nil {
			return err
		}
		switch step := msg.GetStep().(type) {
		case *chunkbridgev1.WriteSnapshotFileRequest_Entries_:
			for _, e := range step.Entries.GetEntries() {
				w.pending = append(w.pending, e)
				if len(w.pending) == entryBatch {
					if err := w.flush(ctx); err != nil {
						return apierr.Status(err)
					}
				}
			}
			// Checked at the end of every message, so a refusal reaches
			// the writer while it still sends, not only at Commit.
			if len(w.pending) > 0 {
				if err := w.flush(ctx); err != nil {
					return apierr.Status(err)
				}
			}
		case *chunkbridgev1.WriteSnapshotFileRequest_Commit_:
			info, err := w.commit(ctx)
			if err != nil {
				return apierr.Status(err)
			}
			return stream.Send(&chunkbridgev1.WriteSnapshotFileResponse{Step: &chunkbridgev1.WriteSnapshotFileResponse_Committed_{
				Committed: &chunkbridgev1.WriteSnapshotFileResponse_Committed{File: info},
			}})
		default:
			return apierr.Status(fmt.Errorf("%w: snapshot file %s: Create may come only once", apierr.ErrInvalid, w.path))
		}
	}
}

func mustTime(s string) time.Time {
	t, _ := time.Parse(snapshotTimeLayout, s)
	return t
}

func (s *Server) newSnapshotWriter(ctx context.Context, c *chunkbridgev1.WriteSnapshotFileRequest_Create) (*snapshotWriter, error) {
	if err := errors.Join(checkType(c.GetType()), checkBackupID(c.GetBackupId()), checkFileName(c.GetName())); err != nil {
		return nil, err
	}
	t := time.Now()
	if c.GetTime() != nil {
		t = c.GetTime().AsTime()
		// A snapshot from the future would be "latest" for good and kept
		// by every retention rule over real ones: an append-only client
		// could push genuine backups out that way. Clocks may be a little
		// apart, no more.
		if limit := time.Now().Add(maxClockSkew); t.After(limit) {
			return nil, fmt.Errorf("%w: snapshot time %s is in the future (this server's clock says %s); check the client's clock",
				apierr.ErrInvalid, t.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339))
		}
	}
	ext := ".didx"
	if c.GetFixed() {
		ext = ".fidx"
	}
	// A backup into a namespace that does not exist is refused, as PBS
	// does: namespaces are created explicitly.
	if err := s.namespaceExists(ctx, c.GetNamespace()); err != nil {
		return nil, err
	}
	w := &snapshotWriter{s: s, create: c, path: snapshotPath{c.GetNamespace(), c.GetType(), c.GetBackupId(), t.UTC().Format(snapshotTimeLayout), c.GetName() + ext}, ticket: s.guard.Ticket()}
	// The path must parse back (the name with its extension fits 255
	// bytes, the year four digits): listings would skip the file, and
	// garbage collection refuses to run past it, for every tenant.
	if _, err := parseSnapshotPath(w.path.String(), false); err != nil {
		return nil, err
	}
	now := uint64(time.Now().Unix())
	if c.GetFixed() {
		if c.GetChunkSize() < 1 || c.GetChunkSize() > maxChunkSize {
			return nil, fmt.Errorf("%w: snapshot file %s: fixed chunk size %d: want 1 to %d", apierr.ErrInvalid, w.path, c.GetChunkSize(), maxChunkSize)
		}
		if c.GetFileSize() < 0 {
			return nil, fmt.Errorf("%w: snapshot file %s: file size %d", apierr.ErrInvalid, w.path, c.GetFileSize())
		}
		slots, _ := pbsindex.FixedSlots(uint64(c.GetFileSize()), uint64(c.GetChunkSize()))
		if slots > maxEntries {
			return nil, fmt.Errorf("%w: snapshot file %s: %d slots, at most %d; use a larger chunk size", apierr.ErrInvalid, w.path, slots, maxEntries)
		}
		w.fixed = &pbsindex.Fixed{UUID: pbsindex.NewUUID(), CTime: now, Size: uint64(c.GetFileSize()), ChunkSize: uint64(c.GetChunkSize())}
		w.slots = int64(slots)
		w.sparse = map[int64]pbsindex.Digest{}
	} else {
		if c.GetFileSize() != 0 {
			return nil, fmt.Errorf("%w: snapshot file %s: a dynamic file has file size 0, not %d", apierr.ErrInvalid, w.path, c.GetFileSize())
		}
		w.dynamic = &pbsindex.Dynamic{UUID: pbsindex.NewUUID(), CTime: now}
	}
	// A snapshot file is written once. EXCL refuses a snapshot that has
	// any file already (PMXBCKUP's meaning: the snapshot must be new);
	// without it a file joins the snapshot, new or not.
	prefix := snapshotPrefix + w.path.dir() + "/"
	if c.GetExclusive() {
		exists := false
		errStop := errors.New("stop")
		err := s.view(ctx).List(ctx, prefix, func(storage.Info) error { exists = true; return errStop })
		if err != nil && !errors.Is(err, errStop) {
			return nil, fmt.Errorf("snapshot %s: %w", w.path.dir(), err)
		}
		if exists {
			return nil, fmt.Errorf("snapshot %s: %w (exclusive create)", w.path.dir(), apierr.ErrExists)
		}
	} else {
		// A name is used once per snapshot, whatever its kind: casync
		// reads foo.fidx and foo.didx both as foo.caibx.
		other := w.path
		other.file = c.GetName() + map[string]string{".fidx": ".didx", ".didx": ".fidx"}[ext]
		for _, p := range []snapshotPath{w.path, other} {
			if _, err := s.view(ctx).Stat(ctx, p.key()); err == nil {
				return nil, fmt.Errorf("snapshot file %s: %w (a snapshot has one file of a name: pick another name, or another snapshot time)", p, apierr.ErrExists)
			} else if !errors.Is(err, storage.ErrNotFound) {
				return nil, fmt.Errorf("snapshot file %s: %w", p, err)
			}
		}
	}
	// A tenant over a quota is refused before any chunk is sent: at once
	// when it is full, and for a fixed file when its announced size would
	// not fit. The commit checks again.
	tenant := auth.FromContext(ctx).Tenant
	if err := errors.Join(s.cfg.Quota.LogicalFull(tenant), s.cfg.Quota.CheckStored(ctx, tenant)); err != nil {
		return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	if w.fixed != nil {
		if err := s.cfg.Quota.CheckLogical(ctx, tenant, int64(w.fixed.Size), s.contentBytes); err != nil {
			return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
		}
	}
	return w, nil
}

// maxClockSkew is how far in the future a snapshot's time may be.
const maxClockSkew = 5 * time.Minute

// refuse reports an unusable entry; the stream goes on, Commit will fail.
func (w *snapshotWriter) refuse(code codes.Code, digest, format string, args ...any) error {
	w.refused++
	return w.send(&chunkbridgev1.WriteSnapshotFileResponse{Step: &chunkbridgev1.WriteSnapshotFileResponse_Refused{
		Refused: &chunkbridgev1.WriteSnapshotFileResponse_EntryRefused{
			Code: int32(code), Digest: digest, Message: fmt.Sprintf("snapshot file %s: ", w.path) + fmt.Sprintf(format, args...),
		},
	}})
}

// flush checks the pending entries against the store (existence and size)
// and places them.
func (w *snapshotWriter) flush(ctx context.Context) error {
	batch := w.pending
	w.pending = w.pending[:0:0]
	ids := make([]chunk.ID, 0, len(batch))
	valid := make([]bool, len(batch))
	for i, e := range batch {
		id, err := chunk.ParseID(e.GetDigest())
		if err != nil {
			if err := w.refuse(codes.InvalidArgument, e.GetDigest(), "digest %q is not 64 hex characters", e.GetDigest()); err != nil {
				return err
			}
			continue
		}
		valid[i] = true
		ids = append(ids, id)
	}
	sizes, err := w.s.chunks.Sizes(w.chunkCtx(ctx), ids)
	if err != nil {
		return fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	k := 0
	for i, e := range batch {
		if !valid[i] {
			continue
		}
		id, size := ids[k], sizes[k]
		k++
		if size < 0 {
			if err := w.refuse(codes.FailedPrecondition, e.GetDigest(), "chunk %s is not stored; upload it first", id); err != nil {
				return err
			}
			continue
		}
		if err := w.place(e, id, size); err != nil {
			return err
		}
	}
	return nil
}

func (w *snapshotWriter) place(e *chunkbridgev1.WriteSnapshotFileRequest_Entry, id chunk.ID, size int64) error {
	if f := w.fixed; f != nil {
		slot := e.GetSlot()
		if slot < 0 || slot >= w.slots {
			return w.refuse(codes.InvalidArgument, e.GetDigest(), "slot %d out of range: the file has %d slots", slot, w.slots)
		}
		want := int64(f.ChunkSize)
		if slot == w.slots-1 {
			want = int64(f.Size) - slot*int64(f.ChunkSize)
		}
		if size != want {
			return w.refuse(codes.InvalidArgument, e.GetDigest(), "slot %d needs a chunk of %d bytes, chunk %s has %d", slot, want, id, size)
		}
		switch n := int64(len(f.Digests)); {
		case slot < n:
			f.Digests[slot] = pbsindex.Digest(id)
		case slot > n:
			if _, ok := w.sparse[slot]; !ok && len(w.sparse) >= maxAhead {
				// A map entry costs three times a dense slot: out-of-order
				// slots are bounded, so that a client sending them in
				// reverse cannot make memory grow past what in-order
				// entries would cost.
				return w.refuse(codes.InvalidArgument, e.GetDigest(), "slot %d is more than %d slots ahead of the first unfilled one (%d): send fixed entries roughly in order", slot, maxAhead, n)
			}
			w.sparse[slot] = pbsindex.Digest(id)
		default:
			f.Digests = append(f.Digests, pbsindex.Digest(id))
			for {
				d, ok := w.sparse[int64(len(f.Digests))]
				if !ok {
					break
				}
				delete(w.sparse, int64(len(f.Digests)))
				f.Digests = append(f.Digests, d)
			}
		}
		return nil
	}
	d := w.dynamic
	start := d.Size()
	if e.GetOffset() != int64(start) {
		return w.refuse(codes.InvalidArgument, e.GetDigest(), "offset %d is not contiguous: the previous chunks end at %d", e.GetOffset(), start)
	}
	if len(d.Entries) == maxEntries {
		return w.refuse(codes.InvalidArgument, e.GetDigest(), "more than %d chunks", maxEntries)
	}
	d.Entries = append(d.Entries, pbsindex.DynamicEntry{End: start + uint64(size), Digest: pbsindex.Digest(id)})
	return nil
}

// commit publishes the file if every entry was accepted and, for a fixed
// file, every slot is filled.
func (w *snapshotWriter) commit(ctx context.Context) (*chunkbridgev1.SnapshotFileInfo, error) {
	if err := w.flush(ctx); err != nil {
		return nil, err
	}
	if w.refused > 0 {
		return nil, fmt.Errorf("%w: snapshot file %s: %d entries were refused; nothing was published", apierr.ErrInvalid, w.path, w.refused)
	}
	var buf bytes.Buffer
	meta := storage.Metadata{metaCreated: time.Now().UTC().Format(time.RFC3339Nano)}
	if w.create.GetEncrypted() {
		meta[metaEncrypted] = "true"
	}
	if f := w.fixed; f != nil {
		if filled := int64(len(f.Digests) + len(w.sparse)); filled != w.slots {
			return nil, fmt.Errorf("%w: snapshot file %s: %d of %d slots are filled; nothing was published", apierr.ErrInvalid, w.path, filled, w.slots)
		}
		if err := pbsindex.WriteFixed(&buf, f); err != nil {
			return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
		}
		meta[metaFixed], meta[metaChunkSize] = "true", strconv.FormatUint(f.ChunkSize, 10)
		meta[metaChunks], meta[metaContentSize] = strconv.Itoa(len(f.Digests)), strconv.FormatUint(f.Size, 10)
	} else {
		if err := pbsindex.WriteDynamic(&buf, w.dynamic); err != nil {
			return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
		}
		meta[metaFixed] = "false"
		meta[metaChunks], meta[metaContentSize] = strconv.Itoa(len(w.dynamic.Entries)), strconv.FormatUint(w.dynamic.Size(), 10)
	}
	ids := w.ids()
	// The tenant's binding to its domain exists before any of its files.
	chunks, err := w.s.chunks.DomainOf(w.chunkCtx(ctx))
	if err != nil {
		return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	content, _ := strconv.ParseInt(meta[metaContentSize], 10, 64)
	admitted, err := w.s.admit(ctx, content)
	if err != nil {
		return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	published := false
	defer func() { admitted(published) }()
	commit, recheck, err := w.s.guard.Commit(ctx, w.ticket, ids)
	if err != nil {
		return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	defer func() { commit.Done(context.WithoutCancel(ctx), published) }()
	if recheck {
		if err := w.s.recheck(ctx, chunks, ids); err != nil {
			return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
		}
	}
	size := int64(buf.Len())
	pctx, cancel := commit.PublishContext(ctx)
	defer cancel()
	published = true // even if Put fails: it may have stored the file
	// A snapshot file is written once: even two writers racing for one
	// name cannot replace each other's file.
	created, err := w.s.view(pctx).PutIfAbsent(pctx, w.path.key(), &buf, size, meta)
	if err == nil && !created {
		err = fmt.Errorf("%w: written by another client meanwhile", apierr.ErrExists)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot file %s: %w", w.path, err)
	}
	w.s.referenced(ctx, ids)
	return fileInfo(w.path, storage.Info{Size: size, Metadata: meta}), nil
}

// chunkCtx is ctx for the chunk service's checks of the file's entries:
// an encrypted file's chunks are looked for in the encrypted space only.
func (w *snapshotWriter) chunkCtx(ctx context.Context) context.Context {
	if w.create.GetEncrypted() {
		return chunk.Encrypted(ctx)
	}
	return ctx
}

// ids is the set of chunks the file references.
func (w *snapshotWriter) ids() gcguard.IDs {
	ids := gcguard.IDs{}
	if f := w.fixed; f != nil {
		for _, d := range f.Digests {
			ids[chunk.ID(d)] = struct{}{}
		}
	} else {
		for _, e := range w.dynamic.Entries {
			ids[chunk.ID(e.Digest)] = struct{}{}
		}
	}
	return ids
}

func fileInfo(p snapshotPath, i storage.Info) *chunkbridgev1.SnapshotFileInfo {
	info := &chunkbridgev1.SnapshotFileInfo{Path: p.String(), Name: p.file, Size: i.Size, Fixed: i.Metadata[metaFixed] == "true", Encrypted: i.Metadata[metaEncrypted] == "true"}
	info.ContentSize, _ = strconv.ParseInt(i.Metadata[metaContentSize], 10, 64)
	info.ChunkCount, _ = strconv.ParseInt(i.Metadata[metaChunks], 10, 64)
	info.ChunkSize, _ = strconv.ParseInt(i.Metadata[metaChunkSize], 10, 64)
	return info
}

// resolve turns a path whose time is "latest" into the newest snapshot
// that has the file.
func (s *Server) resolve(ctx context.Context, p snapshotPath) (snapshotPath, error) {
	if p.time != latest {
		return p, nil
	}
	var newest string
	err := s.view(ctx).List(ctx, snapshotPrefix+p.group()+"/", func(i storage.Info) error {
		q, err := parseSnapshotPath(strings.TrimPrefix(i.Key, snapshotPrefix), false)
		if err == nil && q.group() == p.group() && q.file == p.file && q.time > newest {
			newest = q.time
		}
		return nil
	})
	if err != nil {
		return p, fmt.Errorf("snapshot file %s: %w", p, err)
	}
	if newest == "" {
		return p, fmt.Errorf("snapshot file %s: no snapshot of %s has it: %w", p.file, p.group(), apierr.ErrNotFound)
	}
	p.time = newest
	return p, nil
}

// readSnapshotFile loads and parses a snapshot file for a reader that
// fetches its chunks from the plain space (casync, PMXBCKUP): an
// encrypted file is refused, its chunks being DataBlobs only the PBS
// reader serves.
func (s *Server) readSnapshotFile(ctx context.Context, p snapshotPath) (*pbsindex.Fixed, *pbsindex.Dynamic, error) {
	rc, info, err := s.view(ctx).Get(ctx, p.key())
	if err != nil {
		return nil, nil, notFound("snapshot file", p.String(), err)
	}
	defer rc.Close()
	if info.Metadata[metaEncrypted] == "true" {
		return nil, nil, fmt.Errorf("%w: snapshot file %s is an encrypted PBS archive: only a Proxmox Backup client with its key can restore it (through the PBS gateway), not casync or PMXBCKUP", apierr.ErrFailedPrecondition, p)
	}
	if strings.HasSuffix(p.file, ".fidx") {
		f, err := pbsindex.ReadFixed(rc, maxEntries)
		if err != nil {
			return nil, nil, fmt.Errorf("snapshot file %s: %w", p, err)
		}
		return f, nil, nil
	}
	d, err := pbsindex.ReadDynamic(rc, maxEntries)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot file %s: %w", p, err)
	}
	return nil, d, nil
}

// ReadSnapshotDigests streams a snapshot file's digests in index order,
// duplicates included.
func (s *Server) ReadSnapshotDigests(req *chunkbridgev1.ReadSnapshotDigestsRequest, stream grpc.ServerStreamingServer[chunkbridgev1.ReadSnapshotDigestsResponse]) error {
	if err := auth.Check(stream.Context(), auth.Read, "snapshots"); err != nil {
		return apierr.Status(err)
	}
	ctx := stream.Context()
	p, err := parseSnapshotPath(req.GetPath(), true)
	if err == nil {
		p, err = s.resolve(ctx, p)
	}
	if err != nil {
		return apierr.Status(err)
	}
	f, d, err := s.readSnapshotFile(ctx, p)
	if err != nil {
		return apierr.Status(err)
	}
	var digests []pbsindex.Digest
	if f != nil {
		digests = f.Digests
	} else {
		digests = make([]pbsindex.Digest, len(d.Entries))
		for i, e := range d.Entries {
			digests[i] = e.Digest
		}
	}
	const per = 4096
	for off := 0; off < len(digests); off += per {
		resp := &chunkbridgev1.ReadSnapshotDigestsResponse{}
		for _, dg := range digests[off:min(off+per, len(digests))] {
			resp.Digests = append(resp.Digests, hex.EncodeToString(dg[:]))
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

// ListSnapshots groups the snapshot files by snapshot, newest first within
// a backup id.
func (s *Server) ListSnapshots(ctx context.Context, req *chunkbridgev1.ListSnapshotsRequest) (*chunkbridgev1.ListSnapshotsResponse, error) {
	if err := auth.Check(ctx, auth.Read, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	ns, depth := req.GetNamespace(), int(req.GetMaxDepth())
	if depth < 0 || depth > MaxNamespaceDepth {
		return nil, apierr.Status(fmt.Errorf("%w: max depth %d: want 0 to %d", apierr.ErrInvalid, depth, MaxNamespaceDepth))
	}
	if err := s.namespaceExists(ctx, ns); err != nil {
		return nil, apierr.Status(err)
	}
	typ, id := req.GetType(), req.GetBackupId()
	if typ != "" {
		if err := checkType(typ); err != nil {
			return nil, apierr.Status(err)
		}
	}
	if id != "" {
		if err := checkBackupID(id); err != nil {
			return nil, apierr.Status(err)
		}
	}
	// The namespace's own snapshots are under its type directories, so a
	// listing of them alone never walks the namespaces below it; with a
	// depth, those (ns/…) are listed too.
	base := snapshotPrefix + nsDir(ns)
	prefixes := []string{base}
	switch {
	case depth == 0 && typ != "" && id != "":
		prefixes = []string{base + typ + "/" + id + "/"}
	case depth == 0 && typ != "":
		prefixes = []string{base + typ + "/"}
	case depth == 0:
		prefixes = prefixes[:0]
		for _, t := range sortedTypes {
			prefixes = append(prefixes, base+t+"/")
		}
	}
	snaps, err := s.snapshots(ctx, prefixes, func(p snapshotPath) bool {
		return within(p.ns, ns, depth) && (typ == "" || p.typ == typ) && (id == "" || p.id == id)
	})
	if err != nil {
		return nil, apierr.Status(err)
	}
	return &chunkbridgev1.ListSnapshotsResponse{Snapshots: snaps}, nil
}

// snapshots lists the files under prefix (only those of the snapshots keep
// accepts) and describes them from their metadata: the listing's where
// the store gives it (metadataList), else fetched in parallel.
func (s *Server) snapshots(ctx context.Context, prefixes []string, keep func(snapshotPath) bool) ([]*chunkbridgev1.Snapshot, error) {
	var paths []snapshotPath
	var listed []storage.Info // paths[i]'s listing entry
	blobs := map[string][]*chunkbridgev1.SnapshotBlobInfo{}
	var blobDirs []snapshotPath // snapshots seen through a blob, in listing order
	visit := func(i storage.Info) error {
		rel := strings.TrimPrefix(i.Key, snapshotPrefix)
		if p, ok := parseBlobPath(rel); ok {
			if keep(p) {
				if blobs[p.dir()] == nil {
					blobDirs = append(blobDirs, p)
				}
				blobs[p.dir()] = append(blobs[p.dir()], &chunkbridgev1.SnapshotBlobInfo{Name: p.file, Size: i.Size})
			}
			return nil
		}
		p, err := parseSnapshotPath(rel, false)
		if err == nil && keep(p) {
			paths = append(paths, p)
			listed = append(listed, i)
		}
		return nil
	}
	list := metadataList(s.view(ctx))
	for _, prefix := range prefixes {
		if err := list(ctx, prefix, visit); err != nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
	}
	infos := make([]*chunkbridgev1.SnapshotFileInfo, len(paths))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, p := range paths {
		if listed[i].Metadata != nil {
			infos[i] = fileInfo(p, listed[i]) // the listing carried it
			continue
		}
		g.Go(func() error {
			st, err := s.view(gctx).Stat(gctx, p.key())
			if errors.Is(err, storage.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("list snapshots: %s: %w", p, err)
			}
			infos[i] = fileInfo(p, st)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	byDir := map[string]*chunkbridgev1.Snapshot{}
	var out []*chunkbridgev1.Snapshot
	// snapshot is p's snapshot in out, added when first seen (a snapshot
	// of blobs only is first seen through its blobs).
	snapshot := func(p snapshotPath) *chunkbridgev1.Snapshot {
		snap := byDir[p.dir()]
		if snap == nil {
			snap = &chunkbridgev1.Snapshot{Namespace: p.ns, Type: p.typ, BackupId: p.id, Time: timestamppb.New(mustTime(p.time))}
			byDir[p.dir()] = snap
			out = append(out, snap)
		}
		return snap
	}
	for i, p := range paths {
		if infos[i] != nil {
			snap := snapshot(p)
			snap.Files = append(snap.Files, infos[i])
		}
	}
	for _, p := range blobDirs {
		snapshot(p).Blobs = blobs[p.dir()]
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Type != b.Type || a.BackupId != b.BackupId {
			return a.Type+"/"+a.BackupId < b.Type+"/"+b.BackupId
		}
		return a.Time.AsTime().After(b.Time.AsTime())
	})
	return out, nil
}

func snapshotDir(ns, typ, id, t string) (string, error) {
	if err := errors.Join(CheckNamespace(ns), checkType(typ), checkBackupID(id)); err != nil {
		return "", err
	}
	if _, err := time.Parse(snapshotTimeLayout, t); err != nil {
		return "", fmt.Errorf("%w: snapshot time %q: want RFC 3339 UTC like 2019-03-06T09:06:52Z", apierr.ErrInvalid, t)
	}
	return nsDir(ns) + typ + "/" + id + "/" + t, nil
}

// GetSnapshot describes one snapshot.
func (s *Server) GetSnapshot(ctx context.Context, req *chunkbridgev1.GetSnapshotRequest) (*chunkbridgev1.GetSnapshotResponse, error) {
	if err := auth.Check(ctx, auth.Read, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	dir, err := snapshotDir(req.GetNamespace(), req.GetType(), req.GetBackupId(), req.GetTime())
	if err != nil {
		return nil, apierr.Status(err)
	}
	snaps, err := s.snapshots(ctx, []string{snapshotPrefix + dir + "/"}, func(snapshotPath) bool { return true })
	if err != nil {
		return nil, apierr.Status(err)
	}
	if len(snaps) == 0 {
		return nil, apierr.Status(fmt.Errorf("snapshot %s: %w", dir, apierr.ErrNotFound))
	}
	return &chunkbridgev1.GetSnapshotResponse{Snapshot: snaps[0]}, nil
}

// DeleteSnapshot removes a snapshot's files.
func (s *Server) DeleteSnapshot(ctx context.Context, req *chunkbridgev1.DeleteSnapshotRequest) (*chunkbridgev1.DeleteSnapshotResponse, error) {
	if err := auth.Check(ctx, auth.Replace, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	dir, err := snapshotDir(req.GetNamespace(), req.GetType(), req.GetBackupId(), req.GetTime())
	if err != nil {
		return nil, apierr.Status(err)
	}
	var keys []string
	if err := s.view(ctx).List(ctx, snapshotPrefix+dir+"/", func(i storage.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		return nil, apierr.Status(fmt.Errorf("delete snapshot %s: %w", dir, err))
	}
	if len(keys) == 0 {
		return nil, apierr.Status(fmt.Errorf("snapshot %s: %w", dir, apierr.ErrNotFound))
	}
	// The PBS manifest goes first: a delete cut short leaves a snapshot
	// PBS listings no longer show, never one missing files.
	sort.SliceStable(keys, func(i, j int) bool {
		return strings.HasSuffix(keys[i], "/index.json.blob") && !strings.HasSuffix(keys[j], "/index.json.blob")
	})
	for _, k := range keys {
		if err := s.view(ctx).Delete(ctx, k); err != nil {
			return nil, apierr.Status(fmt.Errorf("delete snapshot %s: %w", dir, err))
		}
	}
	return &chunkbridgev1.DeleteSnapshotResponse{}, nil
}
