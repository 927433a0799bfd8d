package catalog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Metadata kept with each index object, so listing and stat need not
// parse the index.
const (
	metaChunks      = "chunks"
	metaContentSize = "content-size"
	metaAlgorithm   = "algorithm"
	metaCreated     = "created"
)

// existenceBatch is how many distinct chunk ids are checked per call.
const existenceBatch = 10_000

// PutIndex spools the index to a local file (so a large index is never
// held in memory), validates it, checks that every chunk it references is
// stored, and only then publishes it under indexes/<name>.
func (s *Server) PutIndex(stream grpc.ClientStreamingServer[chunkbridgev1.PutIndexRequest, chunkbridgev1.PutIndexResponse]) error {
	ctx := stream.Context()
	if err := auth.Check(ctx, auth.Append, "indexes"); err != nil {
		return apierr.Status(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return apierr.Status(fmt.Errorf("put index: %w", err))
	}
	name, err := writableIndexName(first.GetName())
	if err != nil {
		return apierr.Status(err)
	}
	// Bounded in number, as blob spools are: concurrent uploads of 1 GiB
	// indexes must not fill the spool disk.
	if err := holdSpool(ctx, s.indexSpools, "index", "--max-index-spools"); err != nil {
		return apierr.Status(fmt.Errorf("put index %s: %w", name, err))
	}
	defer s.indexSpools.Release(1)
	f, err := os.CreateTemp(s.cfg.SpoolDir, "index-*")
	if err != nil {
		return apierr.Status(fmt.Errorf("put index %s: spool: %w", name, err))
	}
	defer os.Remove(f.Name())
	defer f.Close()
	size, err := spool(f, first.GetData(), func() ([]byte, error) {
		msg, err := stream.Recv()
		return msg.GetData(), err
	}, s.cfg.MaxIndexSize, "index")
	if err != nil {
		return apierr.Status(fmt.Errorf("put index %s: %w", name, err))
	}
	info, err := s.publishIndex(ctx, name, f, size)
	if err != nil {
		return apierr.Status(err)
	}
	return stream.SendAndClose(&chunkbridgev1.PutIndexResponse{Index: info})
}

// spool copies a client stream's data (first, then what next returns
// until io.EOF) into f, refusing more than limit bytes of what: a large
// upload is never held in memory.
func spool(f *os.File, first []byte, next func() ([]byte, error), limit int64, what string) (int64, error) {
	var size int64
	for data := first; ; {
		size += int64(len(data))
		if size > limit {
			return 0, fmt.Errorf("%w: %s larger than %d bytes", apierr.ErrInvalid, what, limit)
		}
		if _, err := f.Write(data); err != nil {
			return 0, fmt.Errorf("spool: %w", err)
		}
		var err error
		data, err = next()
		if err == io.EOF {
			return size, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// PublishIndex validates the size bytes of f as a casync index and
// stores it under name; the casync gateway and HTTP store use it too.
func (s *Server) publishIndex(ctx context.Context, name string, f *os.File, size int64) (*chunkbridgev1.IndexInfo, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	// The ticket comes before the existence checks: a GC delete after it
	// makes the commit re-check (see gcguard).
	ticket := s.guard.Ticket()
	seen := gcguard.IDs{}
	var batch []chunk.ID
	var missing []chunk.ID
	var nMissing int
	check := func() error {
		m, err := s.chunks.FindMissing(ctx, batch)
		if err != nil {
			return err
		}
		nMissing += len(m)
		if len(missing) < 5 {
			missing = append(missing, m[:min(len(m), 5-len(missing))]...)
		}
		batch = batch[:0]
		return nil
	}
	sum, err := scanIndex(io.LimitReader(f, size), size, func(id chunk.ID) error {
		if _, ok := seen[id]; ok {
			return nil
		}
		seen[id] = struct{}{}
		batch = append(batch, id)
		if len(batch) == existenceBatch {
			return check()
		}
		return nil
	})
	if err == nil && len(batch) > 0 {
		err = check()
	}
	if err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	if nMissing > 0 {
		ids := make([]string, len(missing))
		for i, id := range missing {
			ids[i] = id.String()
		}
		return nil, fmt.Errorf("put index %s: %w: it references %d chunks the store lacks (first: %s); upload them first",
			name, apierr.ErrMissingChunks, nMissing, strings.Join(ids, ", "))
	}
	// The tenant's binding to its domain exists before any of its files.
	chunks, err := s.chunks.DomainOf(ctx)
	if err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	admitted, err := s.admit(ctx, sum.contentSize)
	if err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	published := false
	defer func() { admitted(published) }()
	commit, recheck, err := s.guard.Commit(ctx, ticket, seen)
	if err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	defer func() { commit.Done(context.WithoutCancel(ctx), published) }()
	if recheck {
		if err := s.recheck(ctx, chunks, seen); err != nil {
			return nil, fmt.Errorf("put index %s: %w", name, err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	created := time.Now().UTC()
	meta := storage.Metadata{
		metaChunks:      strconv.FormatInt(sum.chunks, 10),
		metaContentSize: strconv.FormatInt(sum.contentSize, 10),
		metaAlgorithm:   strconv.Itoa(int(sum.algorithm)),
		metaCreated:     created.Format(time.RFC3339Nano),
	}
	pctx, cancel := commit.PublishContext(ctx)
	defer cancel()
	published = true // even if Put fails: it may have stored the file
	if auth.FromContext(ctx).Allows(auth.Replace) {
		err = s.view(pctx).Put(pctx, indexPrefix+name, io.LimitReader(f, size), size, meta)
	} else {
		// An append-only principal adds, never replaces: atomically.
		var created bool
		created, err = s.view(pctx).PutIfAbsent(pctx, indexPrefix+name, io.LimitReader(f, size), size, meta)
		if err == nil && !created {
			err = fmt.Errorf("%w: %s may not replace it: its role %s only adds; replacing needs the write role",
				apierr.ErrExists, auth.FromContext(ctx).Name, auth.FromContext(ctx).Role)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("put index %s: %w", name, err)
	}
	s.referenced(ctx, seen)
	return indexInfo(name, storage.Info{Size: size, Metadata: meta}), nil
}

func indexInfo(name string, i storage.Info) *chunkbridgev1.IndexInfo {
	info := &chunkbridgev1.IndexInfo{Name: name, Size: i.Size}
	info.ChunkCount, _ = strconv.ParseInt(i.Metadata[metaChunks], 10, 64)
	info.ContentSize, _ = strconv.ParseInt(i.Metadata[metaContentSize], 10, 64)
	alg, _ := strconv.Atoi(i.Metadata[metaAlgorithm])
	info.Algorithm = chunkbridgev1.DigestAlgorithm(alg)
	created, err := time.Parse(time.RFC3339Nano, i.Metadata[metaCreated])
	if err != nil {
		created = i.Modified
	}
	info.Created = timestamppb.New(created)
	return info
}

// GetIndex streams the stored index in 1 MiB pieces.
func (s *Server) GetIndex(req *chunkbridgev1.GetIndexRequest, stream grpc.ServerStreamingServer[chunkbridgev1.GetIndexResponse]) error {
	if err := auth.Check(stream.Context(), auth.Read, "indexes"); err != nil {
		return apierr.Status(err)
	}
	name, err := IndexName(req.GetName())
	if err != nil {
		return apierr.Status(err)
	}
	if strings.HasPrefix(name, snapshotPrefix) {
		return s.getSnapshotAsIndex(name, stream)
	}
	rc, _, err := s.view(stream.Context()).Get(stream.Context(), indexPrefix+name)
	if err != nil {
		return apierr.Status(notFound("index", name, err))
	}
	defer rc.Close()
	return sendPieces(rc, func(b []byte) error { return stream.Send(&chunkbridgev1.GetIndexResponse{Data: b}) }, "get index "+name)
}

// sendPieces sends what r holds in pieces of 1 MiB at most; a read error
// is a status naming what.
func sendPieces(r io.Reader, send func([]byte) error, what string) error {
	buf := make([]byte, 1<<20)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if err := send(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return apierr.Status(fmt.Errorf("%s: %w", what, err))
		}
	}
}

// getSnapshotAsIndex serves a PMXBCKUP snapshot file as a casync blob
// index: snapshots/[ns/<a>/…]<type>/<id>/<time>/<file>.caibx names <file>.fidx or
// <file>.didx of that snapshot. Its chunk ids are SHA-256, so the header
// says so, and fixed files become equal-sized entries.
func (s *Server) getSnapshotAsIndex(name string, stream grpc.ServerStreamingServer[chunkbridgev1.GetIndexResponse]) error {
	ctx := stream.Context()
	base, ok := strings.CutSuffix(strings.TrimPrefix(name, snapshotPrefix), ".caibx")
	if !ok {
		return apierr.Status(fmt.Errorf("%w: index %s: a snapshot file is served as a blob index (.caibx)", apierr.ErrInvalid, name))
	}
	var (
		f   *pbsindex.Fixed
		d   *pbsindex.Dynamic
		err error
	)
	for _, ext := range []string{".fidx", ".didx"} {
		var p snapshotPath
		if p, err = parseSnapshotPath(base+ext, true); err != nil {
			return apierr.Status(fmt.Errorf("index %s: %w", name, err))
		}
		// "latest" works here as in pmx restore: the newest snapshot of
		// the group that has the file.
		if p, err = s.resolve(ctx, p); err == nil {
			f, d, err = s.readSnapshotFile(ctx, p)
		}
		if !errors.Is(err, apierr.ErrNotFound) {
			break
		}
	}
	if err != nil {
		return apierr.Status(notFound("index", name, err))
	}
	var buf bytes.Buffer
	if err := blobIndex(&buf, f, d); err != nil {
		return apierr.Status(fmt.Errorf("index %s: %w", name, err))
	}
	for data := buf.Bytes(); len(data) > 0; {
		n := min(len(data), 1<<20)
		if err := stream.Send(&chunkbridgev1.GetIndexResponse{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// blobIndex writes a snapshot file as a casync blob index.
func blobIndex(w io.Writer, f *pbsindex.Fixed, d *pbsindex.Dynamic) error {
	type entry struct {
		id   [32]byte
		size uint64
	}
	var entries []entry
	var maxSize uint64
	if f != nil {
		for i, dg := range f.Digests {
			size := f.ChunkSize
			if i == len(f.Digests)-1 {
				size = f.Size - uint64(i)*f.ChunkSize
			}
			entries = append(entries, entry{dg, size})
		}
		maxSize = f.ChunkSize
	} else {
		var start uint64
		for _, e := range d.Entries {
			entries = append(entries, entry{e.Digest, e.End - start})
			maxSize = max(maxSize, e.End-start)
			start = e.End
		}
	}
	maxSize = max(maxSize, 1)
	avg := maxSize
	if len(entries) > 0 && f == nil {
		avg = max(1, min(maxSize, d.Size()/uint64(len(entries))))
	}
	h, err := caindex.BlobHeader(caindex.SHA256, 1, avg, maxSize)
	if err != nil {
		return err
	}
	cw, err := caindex.NewWriter(w, h)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := cw.Add(e.id, e.size); err != nil {
			return err
		}
	}
	return cw.Close()
}

// StatIndex describes an index from its stored metadata.
func (s *Server) StatIndex(ctx context.Context, req *chunkbridgev1.StatIndexRequest) (*chunkbridgev1.StatIndexResponse, error) {
	if err := auth.Check(ctx, auth.Read, "indexes"); err != nil {
		return nil, apierr.Status(err)
	}
	name, err := IndexName(req.GetName())
	if err != nil {
		return nil, apierr.Status(err)
	}
	i, err := s.view(ctx).Stat(ctx, indexPrefix+name)
	if err != nil {
		return nil, apierr.Status(notFound("index", name, err))
	}
	return &chunkbridgev1.StatIndexResponse{Index: indexInfo(name, i)}, nil
}

// ListIndexes lists one page of indexes in name order, with their
// metadata fetched in parallel.
func (s *Server) ListIndexes(ctx context.Context, req *chunkbridgev1.ListIndexesRequest) (*chunkbridgev1.ListIndexesResponse, error) {
	if err := auth.Check(ctx, auth.Read, "indexes"); err != nil {
		return nil, apierr.Status(err)
	}
	size := int(req.GetPageSize())
	switch {
	case size <= 0:
		size = 1000
	case size > 10_000:
		size = 10_000
	}
	prefix := indexPrefix + strings.TrimLeft(req.GetPrefix(), "/")
	if err := storage.ValidatePrefix(prefix); err != nil {
		return nil, apierr.Status(fmt.Errorf("%w: prefix %q", apierr.ErrInvalid, req.GetPrefix()))
	}
	errFull := errors.New("page full")
	var names []string
	more := false
	err := s.view(ctx).List(ctx, prefix, func(i storage.Info) error {
		name := strings.TrimPrefix(i.Key, indexPrefix)
		if name <= req.GetPageToken() {
			return nil
		}
		if len(names) == size {
			more = true
			return errFull
		}
		names = append(names, name)
		return nil
	})
	if err != nil && !errors.Is(err, errFull) {
		return nil, apierr.Status(fmt.Errorf("list indexes: %w", err))
	}
	resp := &chunkbridgev1.ListIndexesResponse{Indexes: make([]*chunkbridgev1.IndexInfo, len(names))}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i, name := range names {
		g.Go(func() error {
			st, err := s.view(gctx).Stat(gctx, indexPrefix+name)
			if errors.Is(err, storage.ErrNotFound) { // deleted meanwhile
				return nil
			}
			if err != nil {
				return fmt.Errorf("list indexes: %s: %w", name, err)
			}
			resp.Indexes[i] = indexInfo(name, st)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, apierr.Status(err)
	}
	kept := resp.Indexes[:0]
	for _, info := range resp.Indexes {
		if info != nil {
			kept = append(kept, info)
		}
	}
	resp.Indexes = kept
	if more && len(names) > 0 {
		resp.NextPageToken = names[len(names)-1]
	}
	return resp, nil
}

// DeleteIndex removes an index; NotFound when there is none.
func (s *Server) DeleteIndex(ctx context.Context, req *chunkbridgev1.DeleteIndexRequest) (*chunkbridgev1.DeleteIndexResponse, error) {
	if err := auth.Check(ctx, auth.Replace, "indexes"); err != nil {
		return nil, apierr.Status(err)
	}
	name, err := writableIndexName(req.GetName())
	if err != nil {
		return nil, apierr.Status(err)
	}
	if _, err := s.view(ctx).Stat(ctx, indexPrefix+name); err != nil {
		return nil, apierr.Status(notFound("index", name, err))
	}
	if err := s.view(ctx).Delete(ctx, indexPrefix+name); err != nil {
		return nil, apierr.Status(fmt.Errorf("delete index %s: %w", name, err))
	}
	return &chunkbridgev1.DeleteIndexResponse{}, nil
}

// notFound names what is missing without the storage details.
func notFound(what, name string, err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%s %s: %w", what, name, apierr.ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", what, name, err)
}
