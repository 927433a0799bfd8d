package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Catalog is the typed client of the catalog service, for the calls the
// gateways make: casync indexes (GetIndex, PutIndex, StatIndex) and
// PMXBCKUP snapshot files (WriteSnapshotFile, SnapshotDigests). Every
// error it returns is typed as the chunk client's are (apierr.FromStatus,
// apierr.FromCode), and ids are 32-byte arrays; hex exists only on the
// wire.
//
// It has one transport, gRPC, in every deployment: the catalog's server
// is written against gRPC streams (docs/client.md).
type Catalog struct {
	c chunkbridgev1.CatalogServiceClient
}

// NewCatalogGRPC is a client of the catalog service behind conn.
func NewCatalogGRPC(conn grpc.ClientConnInterface) *Catalog {
	return &Catalog{c: chunkbridgev1.NewCatalogServiceClient(conn)}
}

// IndexInfo describes a stored casync index.
type IndexInfo struct {
	Name string
	// Size is the index file's size in bytes.
	Size int64
	// ChunkCount is the chunks it references, with repeats.
	ChunkCount int64
	// ContentSize is the size of the blob or archive it describes.
	ContentSize int64
	Algorithm   chunkbridgev1.DigestAlgorithm
	Created     time.Time
}

func indexInfo(i *chunkbridgev1.IndexInfo) IndexInfo {
	info := IndexInfo{Name: i.GetName(), Size: i.GetSize(), ChunkCount: i.GetChunkCount(), ContentSize: i.GetContentSize(), Algorithm: i.GetAlgorithm()}
	if i.GetCreated() != nil {
		info.Created = i.GetCreated().AsTime()
	}
	return info
}

// StatIndex describes an index; apierr.ErrNotFound if there is none,
// apierr.ErrInvalid for a name that cannot be one.
func (c *Catalog) StatIndex(ctx context.Context, name string) (IndexInfo, error) {
	resp, err := c.c.StatIndex(ctx, &chunkbridgev1.StatIndexRequest{Name: name})
	if err != nil {
		return IndexInfo{}, apierr.FromStatus(err)
	}
	return indexInfo(resp.GetIndex()), nil
}

// GetIndex opens an index's bytes. It waits for the catalog's first
// answer, so an index that does not exist (apierr.ErrNotFound) or a name
// that is refused (apierr.ErrInvalid) fails here, before the caller has
// promised anything to its own client. The caller closes the reader;
// closing it early cancels the stream.
//
// The reader implements io.WriterTo, which hands each message of the
// stream to the writer as it came, without a copy.
func (c *Catalog) GetIndex(ctx context.Context, name string) (*IndexReader, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.c.GetIndex(ctx, &chunkbridgev1.GetIndexRequest{Name: name})
	if err != nil {
		cancel()
		return nil, apierr.FromStatus(err)
	}
	r := &IndexReader{s: s, cancel: cancel}
	first, err := s.Recv()
	switch {
	case errors.Is(err, io.EOF):
		r.err = io.EOF // an empty index: not valid, but the catalog's to judge
	case err != nil:
		cancel()
		return nil, apierr.FromStatus(err)
	default:
		r.buf = first.GetData()
	}
	return r, nil
}

// IndexReader is one index's bytes as the catalog streams them.
type IndexReader struct {
	s      chunkbridgev1.CatalogService_GetIndexClient
	cancel context.CancelFunc
	buf    []byte // the rest of the current message
	err    error  // sticky: io.EOF at the end, or the stream's typed error
}

// next fills buf with the next non-empty message, or sets err.
func (r *IndexReader) next() {
	for len(r.buf) == 0 && r.err == nil {
		resp, err := r.s.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				err = apierr.FromStatus(err)
			}
			r.err = err
			return
		}
		r.buf = resp.GetData()
	}
}

// Read reads the index; a broken stream's error is typed.
func (r *IndexReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.next()
	if len(r.buf) == 0 {
		return 0, r.err
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// WriteTo writes the rest of the index to w, each message as it came. An
// error of w comes back as it is; the stream's is typed.
func (r *IndexReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		r.next()
		if len(r.buf) == 0 {
			if errors.Is(r.err, io.EOF) {
				return total, nil
			}
			return total, r.err
		}
		n, err := w.Write(r.buf)
		total += int64(n)
		r.buf = r.buf[n:]
		if err != nil {
			return total, err
		}
	}
}

// Close ends the stream.
func (r *IndexReader) Close() error {
	r.cancel()
	if r.err == nil {
		r.err = errors.New("read of a closed index")
	}
	return nil
}

// PutIndex opens the upload of index name. Nothing is published until
// Commit, which the catalog answers only once it has validated the whole
// index and found every chunk it references stored; Abort, or the end of
// ctx, leaves nothing behind.
func (c *Catalog) PutIndex(ctx context.Context, name string) (*IndexWriter, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.c.PutIndex(ctx)
	if err != nil {
		cancel()
		return nil, apierr.FromStatus(err)
	}
	return &IndexWriter{s: s, cancel: cancel, name: name}, nil
}

// IndexWriter is one index upload. It is for one goroutine at a time:
// Commit or Abort come after the last Write has returned.
type IndexWriter struct {
	s      chunkbridgev1.CatalogService_PutIndexClient
	cancel context.CancelFunc
	name   string
	named  bool  // the name went out in the first message
	err    error // sticky
	done   bool  // committed or aborted
}

// send sends the next message, the first one with the name. A stream the
// catalog has ended answers with its reason, typed.
func (w *IndexWriter) send(data []byte) error {
	if w.err != nil {
		return w.err
	}
	msg := &chunkbridgev1.PutIndexRequest{Data: data}
	if !w.named {
		msg.Name, w.named = w.name, true
	}
	if err := w.s.Send(msg); err != nil {
		if errors.Is(err, io.EOF) {
			// The catalog refused the index: its status says why.
			_, err = w.s.CloseAndRecv()
			if err == nil {
				err = fmt.Errorf("put index %s: the catalog ended the upload early", w.name)
			}
		}
		w.err = apierr.FromStatus(err)
		return w.err
	}
	return nil
}

// Write sends the next piece of the index. p is marshalled before Write
// returns and is not kept.
func (w *IndexWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, fmt.Errorf("put index %s: write after commit or abort", w.name)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.send(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Commit ends the upload and waits for the catalog to publish the index.
// An index that references chunks the store lacks fails with
// apierr.ErrFailedPrecondition; one that does not parse, or a refused
// name, with apierr.ErrInvalid.
func (w *IndexWriter) Commit() (IndexInfo, error) {
	if w.done {
		return IndexInfo{}, fmt.Errorf("put index %s: commit after commit or abort", w.name)
	}
	w.done = true
	defer w.cancel()
	if !w.named {
		if err := w.send(nil); err != nil {
			return IndexInfo{}, err
		}
	}
	if w.err != nil {
		return IndexInfo{}, w.err
	}
	resp, err := w.s.CloseAndRecv()
	if err != nil {
		return IndexInfo{}, apierr.FromStatus(err)
	}
	return indexInfo(resp.GetIndex()), nil
}

// Abort abandons the upload: nothing is published. It may follow Commit.
func (w *IndexWriter) Abort() {
	w.done = true
	w.cancel()
}

// SnapshotDigests streams the chunk ids of a snapshot file
// ("<type>/<id>/<time>/<file>", time may be "latest") in index order.
func (c *Catalog) SnapshotDigests(ctx context.Context, path string) *DigestIterator {
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.c.ReadSnapshotDigests(ctx, &chunkbridgev1.ReadSnapshotDigestsRequest{Path: path})
	it := &DigestIterator{s: s, cancel: cancel, path: path}
	if err != nil {
		it.err = apierr.FromStatus(err)
	}
	return it
}

// DigestIterator yields a snapshot file's chunk ids.
type DigestIterator struct {
	s      chunkbridgev1.CatalogService_ReadSnapshotDigestsClient
	cancel context.CancelFunc
	path   string
	buf    []string
	err    error
}

// Next is the next id; io.EOF after the last. Errors are typed
// (apierr.ErrNotFound for a file that does not exist); a malformed digest
// from the catalog is apierr.ErrInternal.
func (it *DigestIterator) Next() (ID, error) {
	for len(it.buf) == 0 {
		if it.err != nil {
			return ID{}, it.err
		}
		resp, err := it.s.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				err = apierr.FromStatus(err)
			}
			it.err = err
			it.cancel()
			continue
		}
		it.buf = resp.GetDigests()
	}
	s := it.buf[0]
	it.buf = it.buf[1:]
	id, err := ParseID(s)
	if err != nil {
		it.err = apierr.FromCode(int32(codes.Internal), fmt.Sprintf("the catalog answered a malformed digest %q in %s", s, it.path))
		it.buf = nil
		it.cancel()
		return ID{}, it.err
	}
	return id, nil
}

// Close ends the stream.
func (it *DigestIterator) Close() {
	it.cancel()
	if it.err == nil {
		it.err = errors.New("next on a closed digest iterator")
	}
	it.buf = nil
}

// SnapshotCreate opens a PMXBCKUP snapshot file.
type SnapshotCreate struct {
	// Type is "vm", "ct" or "host".
	Type     string
	BackupID string
	// Time is the snapshot time, whole seconds; zero means now.
	Time time.Time
	// Name is the file name without its extension (the catalog appends
	// .fidx or .didx), e.g. "root.pxar".
	Name  string
	Fixed bool
	// ChunkSize and FileSize are a fixed file's; a dynamic file has
	// neither.
	ChunkSize, FileSize int64
	// Exclusive fails with apierr.ErrExists if the file is already there.
	Exclusive bool
	// Encrypted: the file's chunks were uploaded encrypted (Upload's
	// Encrypted), so they are looked for in the encrypted space, and the
	// file is never served to casync or PMXBCKUP.
	Encrypted bool
	// Namespace is the PBS namespace ("a/b"; "" for the root). It must
	// exist (CreateNamespace).
	Namespace string
}

// SnapshotEntry places one chunk: at Slot of a fixed file, or at Offset
// (contiguous with the entries before it) of a dynamic one.
type SnapshotEntry struct {
	Slot, Offset int64
	ID           ID
}

// SnapshotFileInfo describes a published snapshot file.
type SnapshotFileInfo struct {
	// Path is store-relative, e.g. "host/web-01/2026-11-25T10:00:00Z/root.pxar.didx".
	Path, Name  string
	Fixed       bool
	ContentSize int64
	ChunkCount  int64
	// ChunkSize is a fixed file's.
	ChunkSize int64
	// Size is the index file's.
	Size int64
	// Encrypted: the file's chunks are in the encrypted space.
	Encrypted bool
}

// RefusedEntry is an entry the catalog cannot use; the stream goes on, but
// Commit will fail. It unwraps to the catalog's typed error:
// apierr.ErrInvalid (slot out of range, offset not contiguous, a chunk of
// the wrong size) or apierr.ErrMissingChunks (the chunk is not stored).
type RefusedEntry struct {
	// Digest is the entry's digest as the catalog echoed it.
	Digest string
	Err    error
}

func (e *RefusedEntry) Error() string { return e.Err.Error() }
func (e *RefusedEntry) Unwrap() error { return e.Err }

// missingChunk is a refusal for a chunk that is not stored: the catalog's
// FailedPrecondition, refined as the protocol defines it.
type missingChunk struct{ err error }

func (e missingChunk) Error() string   { return e.err.Error() }
func (e missingChunk) Unwrap() []error { return []error{apierr.ErrMissingChunks, e.err} }

// WriteSnapshotFile opens a snapshot file: it sends create and waits for
// the catalog's answer, so a refused create (apierr.ErrInvalid,
// apierr.ErrExists) fails here. The writer then takes entries and a
// commit from one goroutine, while another reads the catalog's answers
// with Next. Nothing is visible until the commit is answered; a stream
// ended otherwise (Abort, the end of ctx) leaves nothing behind.
func (c *Catalog) WriteSnapshotFile(ctx context.Context, create SnapshotCreate) (*SnapshotWriter, error) {
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.c.WriteSnapshotFile(ctx)
	if err == nil {
		msg := &chunkbridgev1.WriteSnapshotFileRequest_Create{
			Type: create.Type, BackupId: create.BackupID, Name: create.Name,
			Fixed: create.Fixed, ChunkSize: create.ChunkSize, FileSize: create.FileSize, Exclusive: create.Exclusive,
			Encrypted: create.Encrypted, Namespace: create.Namespace,
		}
		if !create.Time.IsZero() {
			msg.Time = timestamppb.New(create.Time)
		}
		err = s.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{Create: msg}})
		// io.EOF: the catalog ended the stream; Recv has its status.
		if errors.Is(err, io.EOF) {
			err = nil
		}
	}
	var resp *chunkbridgev1.WriteSnapshotFileResponse
	if err == nil {
		resp, err = s.Recv()
	}
	if err == nil && resp.GetCreated() == nil {
		err = fmt.Errorf("write snapshot file: the catalog answered create with %T", resp.GetStep())
	}
	if err != nil {
		cancel()
		return nil, apierr.FromStatus(err)
	}
	w := &SnapshotWriter{s: s, cancel: cancel, path: resp.GetCreated().GetPath()}
	if t := resp.GetCreated().GetTime(); t != nil {
		w.time = t.AsTime()
	}
	return w, nil
}

// SnapshotWriter is one snapshot file being written.
type SnapshotWriter struct {
	s         chunkbridgev1.CatalogService_WriteSnapshotFileClient
	cancel    context.CancelFunc
	path      string
	time      time.Time
	committed bool // Next has delivered the commit's answer
}

// Path is the file's store-relative path, as PMXBCKUP's BackupCreated
// returns it.
func (w *SnapshotWriter) Path() string { return w.path }

// Time is the snapshot's time.
func (w *SnapshotWriter) Time() time.Time { return w.time }

// sendErr is what a send answers once the catalog has ended the stream;
// Next returns the reason.
func (w *SnapshotWriter) sendErr(err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("snapshot file %s: the catalog ended the stream; Next has the reason", w.path)
	}
	return apierr.FromStatus(err)
}

// Entries sends entries; the catalog checks them as they come and reports
// a refused one through Next. The digests are encoded before Entries
// returns: the caller may reuse the slice.
func (w *SnapshotWriter) Entries(entries ...SnapshotEntry) error {
	if len(entries) == 0 {
		return nil
	}
	msg := make([]*chunkbridgev1.WriteSnapshotFileRequest_Entry, len(entries))
	for i, e := range entries {
		msg[i] = &chunkbridgev1.WriteSnapshotFileRequest_Entry{Slot: e.Slot, Offset: e.Offset, Digest: e.ID.String()}
	}
	err := w.s.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Entries_{
		Entries: &chunkbridgev1.WriteSnapshotFileRequest_Entries{Entries: msg},
	}})
	if err != nil {
		return w.sendErr(err)
	}
	return nil
}

// Commit asks the catalog to publish the file; Next delivers its answer.
func (w *SnapshotWriter) Commit() error {
	err := w.s.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Commit_{
		Commit: &chunkbridgev1.WriteSnapshotFileRequest_Commit{},
	}})
	if err != nil {
		return w.sendErr(err)
	}
	return nil
}

// Next is the catalog's next answer:
//
//   - a *RefusedEntry error: an entry was refused, the stream goes on (and
//     the commit will fail);
//   - the file's info and no error: the commit is done, the file published;
//     Next then returns io.EOF;
//   - any other error, typed: the stream is over (a failed commit is
//     apierr.ErrInvalid, with the catalog's reason).
func (w *SnapshotWriter) Next() (SnapshotFileInfo, error) {
	for {
		resp, err := w.s.Recv()
		if errors.Is(err, io.EOF) {
			if w.committed {
				return SnapshotFileInfo{}, io.EOF
			}
			err = apierr.FromCode(int32(codes.Internal), fmt.Sprintf("snapshot file %s: the catalog ended the stream without answering a commit", w.path))
		}
		if err != nil {
			w.cancel()
			return SnapshotFileInfo{}, apierr.FromStatus(err)
		}
		switch step := resp.GetStep().(type) {
		case *chunkbridgev1.WriteSnapshotFileResponse_Refused:
			r := step.Refused
			err := apierr.FromCode(r.GetCode(), r.GetMessage())
			if err == nil {
				err = apierr.FromCode(int32(codes.Internal), fmt.Sprintf("snapshot file %s: entry %s refused without a code", w.path, r.GetDigest()))
			}
			if codes.Code(r.GetCode()) == codes.FailedPrecondition {
				err = missingChunk{err}
			}
			return SnapshotFileInfo{}, &RefusedEntry{Digest: r.GetDigest(), Err: err}
		case *chunkbridgev1.WriteSnapshotFileResponse_Committed_:
			w.committed = true
			f := step.Committed.GetFile()
			return SnapshotFileInfo{
				Path: f.GetPath(), Name: f.GetName(), Fixed: f.GetFixed(), ContentSize: f.GetContentSize(),
				ChunkCount: f.GetChunkCount(), ChunkSize: f.GetChunkSize(), Size: f.GetSize(), Encrypted: f.GetEncrypted(),
			}, nil
		}
		// An answer this client does not know: skip it.
	}
}

// Abort abandons the file: nothing is published (unless the commit was
// already answered). Next then fails.
func (w *SnapshotWriter) Abort() { w.cancel() }

// PutSnapshotBlob stores data as the blob file name (ending in ".blob") of
// the snapshot typ/backupID/t of namespace ns ("" for the root), once: an
// existing one is apierr.ErrExists.
func (c *Catalog) PutSnapshotBlob(ctx context.Context, ns, typ, backupID string, t time.Time, name string, data []byte) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.c.PutSnapshotBlob(ctx)
	if err != nil {
		return apierr.FromStatus(err)
	}
	const piece = 1 << 20
	first := &chunkbridgev1.PutSnapshotBlobRequest{Namespace: ns, Type: typ, BackupId: backupID, Time: timestamppb.New(t), Name: name}
	for off := 0; off == 0 || off < len(data); off += piece {
		msg := first
		if off > 0 {
			msg = &chunkbridgev1.PutSnapshotBlobRequest{}
		}
		msg.Data = data[off:min(off+piece, len(data))]
		if err := s.Send(msg); err != nil {
			break // io.EOF: CloseAndRecv has the catalog's status
		}
	}
	_, err = s.CloseAndRecv()
	return apierr.FromStatus(err)
}

// GetSnapshotFile reads a snapshot's blob or index file (in the catalog's
// format) whole; a file larger than limit bytes is apierr.ErrExhausted.
func (c *Catalog) GetSnapshotFile(ctx context.Context, path string, limit int64) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.c.GetSnapshotFile(ctx, &chunkbridgev1.GetSnapshotFileRequest{Path: path})
	if err != nil {
		return nil, apierr.FromStatus(err)
	}
	var out []byte
	for {
		resp, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, apierr.FromStatus(err)
		}
		if int64(len(out)+len(resp.GetData())) > limit {
			return nil, fmt.Errorf("%w: snapshot file %s is larger than %d bytes", apierr.ErrExhausted, path, limit)
		}
		out = append(out, resp.GetData()...)
	}
}

// ListSnapshots lists the snapshots of namespace ns ("" for the root; of
// typ and backupID if set), newest first within a backup id.
func (c *Catalog) ListSnapshots(ctx context.Context, ns, typ, backupID string) ([]*chunkbridgev1.Snapshot, error) {
	resp, err := c.c.ListSnapshots(ctx, &chunkbridgev1.ListSnapshotsRequest{Namespace: ns, Type: typ, BackupId: backupID})
	if err != nil {
		return nil, apierr.FromStatus(err)
	}
	return resp.GetSnapshots(), nil
}

// DeleteSnapshot removes a snapshot's files; t is RFC 3339 UTC.
func (c *Catalog) DeleteSnapshot(ctx context.Context, ns, typ, backupID, t string) error {
	_, err := c.c.DeleteSnapshot(ctx, &chunkbridgev1.DeleteSnapshotRequest{Namespace: ns, Type: typ, BackupId: backupID, Time: t})
	return apierr.FromStatus(err)
}

// ListNamespaces lists parent and the namespaces below it, at most
// maxDepth levels down (negative: all), parents first.
func (c *Catalog) ListNamespaces(ctx context.Context, parent string, maxDepth int) ([]string, error) {
	req := &chunkbridgev1.ListNamespacesRequest{Parent: parent}
	if maxDepth >= 0 {
		d := int32(maxDepth)
		req.MaxDepth = &d
	}
	resp, err := c.c.ListNamespaces(ctx, req)
	if err != nil {
		return nil, apierr.FromStatus(err)
	}
	return resp.GetNamespaces(), nil
}

// CreateNamespace creates ns ("a/b") and its missing parents.
func (c *Catalog) CreateNamespace(ctx context.Context, ns string) error {
	_, err := c.c.CreateNamespace(ctx, &chunkbridgev1.CreateNamespaceRequest{Namespace: ns})
	return apierr.FromStatus(err)
}

// DeleteNamespace removes ns and those below it; with deleteGroups, their
// snapshots too (otherwise a namespace holding any is refused).
func (c *Catalog) DeleteNamespace(ctx context.Context, ns string, deleteGroups bool) error {
	_, err := c.c.DeleteNamespace(ctx, &chunkbridgev1.DeleteNamespaceRequest{Namespace: ns, DeleteGroups: deleteGroups})
	return apierr.FromStatus(err)
}
