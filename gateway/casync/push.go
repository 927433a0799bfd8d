package casync

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/session"
)

const (
	// checkBatch is how many new chunk ids of an arriving index are
	// checked for existence at once.
	checkBatch = 1024
	// requestBatch is the most ids per REQUEST frame (casync's own batch).
	requestBatch = 2048
	// maxUnacked bounds the chunks sent to the chunk service and not yet
	// acknowledged, whatever their size (PushBytes bounds their bytes).
	maxUnacked = 4096
)

// pushing is what the three parts of a push hand each other. The reader
// (the session's main loop) owns the catalog and upload streams' sending
// side; the parser owns the index scan and then publication; the
// acknowledger owns the upload stream's receiving side. They share only
// channels, the outstanding set and a counter.
type pushing struct {
	index  chunkbridgev1.CatalogService_PutIndexClient
	upload chunkbridgev1.ChunkService_UploadChunksClient
	// algorithm carries the index's digest algorithm from the parser to
	// the reader, once.
	algorithm chan chunkbridgev1.DigestAlgorithm
	// sizes are the sizes of chunks sent to the chunk service, in order:
	// it acknowledges in order (services/chunk sendInOrder).
	sizes chan int64
	// inFlight bounds the bytes of those chunks.
	inFlight *session.Budget
	// outstanding are the chunks REQUESTed and not yet stored.
	outstanding *outstanding
	// publishing is closed when publication starts, published when the
	// catalog has published the index.
	publishing, published chan struct{}
	stored                atomic.Int64 // chunks this session created
}

// push accepts an index and the chunks the store lacks. The index goes to
// the catalog as it arrives, but the catalog publishes it only once the
// stream is closed, after every requested chunk has been verified and
// stored; a session that ends earlier cancels the stream and leaves no
// index behind.
func (c *conv) push(ctx context.Context) error {
	if c.remote&caproto.PushIndex == 0 {
		// Store-only push: casync never uploads a chunk this way; its own
		// server says GOODBYE at once (casync-protocol.md §1.8).
		if err := c.send(ctx, &caproto.Goodbye{}); err != nil {
			return err
		}
		return c.untilEOF()
	}
	p := &pushing{
		algorithm:   make(chan chunkbridgev1.DigestAlgorithm, 1),
		sizes:       make(chan int64, maxUnacked),
		inFlight:    session.NewBudget(orDefault(c.h.PushBytes, 16<<20)),
		outstanding: newOutstanding(),
		publishing:  make(chan struct{}),
		published:   make(chan struct{}),
	}
	var err error
	p.index, err = c.h.Catalog.PutIndex(ctx)
	if err == nil {
		err = p.index.Send(&chunkbridgev1.PutIndexRequest{Name: c.args.Index})
	}
	if err != nil {
		return fmt.Errorf("index %s: %w", c.args.Index, err)
	}
	if p.upload, err = c.h.Chunks.UploadChunks(ctx); err != nil {
		return fmt.Errorf("upload stream: %w", err)
	}
	pr, pw := io.Pipe()
	// Whatever ends the session, the parser must not wait for more index.
	defer pw.CloseWithError(errSessionOver)
	requestChunks := c.remote&caproto.PushIndexChunks != 0 && c.args.Store != ""
	c.goWork(func(ctx context.Context) error { return c.parseAndPublish(ctx, pr, p, requestChunks) })
	c.goWork(func(ctx context.Context) error { return c.acknowledge(ctx, p) })

	var alg chunkbridgev1.DigestAlgorithm
	indexEOF := false
	for {
		m, err := c.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			return c.closedDuringPush(ctx, p)
		}
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *caproto.Index:
			if indexEOF {
				return abortf(syscall.EBADMSG, "INDEX after INDEX_EOF")
			}
			// Both consumers are done with the bytes when these return.
			if err := p.index.Send(&chunkbridgev1.PutIndexRequest{Data: m.Data}); err != nil {
				return fmt.Errorf("index %s: %w", c.args.Index, err)
			}
			if _, err := pw.Write(m.Data); err != nil {
				// The parser failed with err: the session ends with it
				// whichever of the two returns first.
				return err
			}
		case *caproto.IndexEOF:
			indexEOF = true
			pw.Close()
		case *caproto.Chunk:
			if alg == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED {
				select {
				case alg = <-p.algorithm:
				default:
					return abortf(syscall.EBADMSG, "CHUNK %x before the index header", m.ID)
				}
			}
			if err := c.upload(ctx, p, alg, m); err != nil {
				return err
			}
		case *caproto.Missing:
			return abortf(syscall.ENOENT, "the client lacks chunk %x that its own index references", m.ID)
		case *caproto.Goodbye:
			return nil
		case *caproto.Abort:
			c.log.Info("client aborted", "errno", m.Errno, "reason", m.Reason)
			return nil
		default:
			return abortf(syscall.EBADMSG, "unexpected %s in a push session", m.Type())
		}
		if testHookPushHandled != nil {
			testHookPushHandled(m.Type())
		}
	}
}

// testHookPushHandled, if set, runs after a push has handled a frame.
var testHookPushHandled func(caproto.Type)

// upload sends one chunk to the chunk service once the bytes in flight
// leave room for it: a client faster than the chunk service waits, unread,
// instead of being buffered.
func (c *conv) upload(ctx context.Context, p *pushing, alg chunkbridgev1.DigestAlgorithm, m *caproto.Chunk) error {
	size := int64(len(m.Data))
	if err := p.inFlight.Acquire(ctx, size); err != nil {
		return nil // the session is over
	}
	select {
	case p.sizes <- size:
	case <-ctx.Done():
		p.inFlight.Release(size)
		return nil
	}
	req := &chunkbridgev1.UploadChunksRequest{
		Id: hex.EncodeToString(m.ID[:]), Algorithm: alg, Encoding: encodingOf(m), Data: m.Data,
	}
	if err := p.upload.Send(req); err != nil {
		return fmt.Errorf("upload chunk %x: %w", m.ID, err)
	}
	c.h.Metrics.chunk("received", len(m.Data))
	return nil
}

// closedDuringPush ends a push whose client closed: normal once the index
// is published, or while its publication is under way (it then finishes,
// or fails and ABORTs, before the session's context ends).
func (c *conv) closedDuringPush(ctx context.Context, p *pushing) error {
	select {
	case <-p.publishing:
	default:
		return errors.New("client closed the session before the push completed; nothing was published")
	}
	select {
	case <-p.published:
	case <-ctx.Done():
	}
	return nil
}

// untilEOF reads until the client closes.
func (c *conv) untilEOF() error {
	for {
		m, err := c.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, ok := m.(*caproto.Goodbye); ok {
			return nil
		}
	}
}

// encodingOf tells the payload's compression by its magic bytes, as casync
// does; the COMPRESSED flag does not say which.
func encodingOf(m *caproto.Chunk) chunkbridgev1.Encoding {
	switch {
	case !m.Compressed():
		return chunkbridgev1.Encoding_ENCODING_RAW
	case bytes.HasPrefix(m.Data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return chunkbridgev1.Encoding_ENCODING_ZSTD
	case bytes.HasPrefix(m.Data, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return chunkbridgev1.Encoding_ENCODING_XZ
	case bytes.HasPrefix(m.Data, []byte{0x1f, 0x8b}):
		return chunkbridgev1.Encoding_ENCODING_GZIP
	}
	// Unknown compression: the chunk service refuses it by name.
	return chunkbridgev1.Encoding_ENCODING_UNSPECIFIED
}

// acknowledge reads the chunk service's acknowledgements: a stored chunk
// is no longer outstanding and gives back its bytes in flight; a refused
// one ends the session.
func (c *conv) acknowledge(ctx context.Context, p *pushing) error {
	for {
		ack, err := p.upload.Recv()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("upload stream: %w", err)
		}
		select {
		case size := <-p.sizes:
			p.inFlight.Release(size)
		default:
			return fmt.Errorf("the chunk service acknowledged chunk %s, which was not sent", ack.GetId())
		}
		switch code := codes.Code(ack.GetCode()); code {
		case codes.OK:
		case codes.DataLoss:
			return abortf(syscall.EBADMSG, "%s", ack.GetMessage())
		default:
			return status.Error(code, ack.GetMessage())
		}
		var got id
		if _, err := hex.Decode(got[:], []byte(ack.GetId())); err != nil {
			return fmt.Errorf("the chunk service acknowledged %q, not a chunk id", ack.GetId())
		}
		if ack.GetCreated() {
			p.stored.Add(1)
		}
		p.outstanding.remove(got)
	}
}

// parseAndPublish reads the index as it arrives, learns its digest
// algorithm, and REQUESTs (low priority, in batches) every chunk the store
// lacks. Once the whole index is read (so INDEX_EOF came) and every
// requested chunk is stored, it publishes the index and says GOODBYE.
func (c *conv) parseAndPublish(ctx context.Context, r *io.PipeReader, p *pushing, request bool) error {
	err := c.parse(ctx, r, p, request)
	if errors.Is(err, errSessionOver) {
		return nil // the reader ended the session
	}
	if err != nil {
		if status.Code(err) == codes.Unknown {
			err = abortf(syscall.EBADMSG, "index %s: %v", c.args.Index, err)
		}
		r.CloseWithError(err) // the reader writing the index fails with err
		return err
	}
	select {
	case <-p.outstanding.close():
	case <-ctx.Done():
		return nil
	}
	close(p.publishing)
	resp, err := p.index.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("publishing index %s: %w", c.args.Index, err)
	}
	close(p.published)
	c.log.Info("index published", "chunks", resp.GetIndex().GetChunkCount(), "new", p.stored.Load(), "size", resp.GetIndex().GetSize())
	return c.send(ctx, &caproto.Goodbye{})
}

func (c *conv) parse(ctx context.Context, r io.Reader, p *pushing, request bool) error {
	seen := map[id]struct{}{}
	var batch []id
	flush := func() error {
		if len(batch) == 0 || !request {
			batch = batch[:0]
			return nil
		}
		req := &chunkbridgev1.FindMissingChunksRequest{Ids: make([]string, len(batch))}
		for i, b := range batch {
			req.Ids[i] = hex.EncodeToString(b[:])
		}
		batch = batch[:0]
		resp, err := c.h.Chunks.FindMissingChunks(ctx, req)
		if err != nil {
			return err
		}
		missing := make([]id, len(resp.GetMissing()))
		for i, h := range resp.GetMissing() {
			if _, err := hex.Decode(missing[i][:], []byte(h)); err != nil {
				return fmt.Errorf("the chunk service reported %q missing, not a chunk id", h)
			}
		}
		// Outstanding before requested: the chunk may be stored at once.
		p.outstanding.add(missing)
		for len(missing) > 0 {
			n := min(len(missing), requestBatch)
			if err := c.send(ctx, &caproto.Request{IDs: missing[:n]}); err != nil {
				return errSessionOver
			}
			missing = missing[n:]
		}
		return nil
	}
	err := scanIndexIDs(r, func(alg chunkbridgev1.DigestAlgorithm) {
		p.algorithm <- alg // once: the header is read once
	}, func(b id) error {
		if _, ok := seen[b]; ok {
			return nil
		}
		seen[b] = struct{}{}
		batch = append(batch, b)
		if len(batch) == checkBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	return err
}

// outstanding is the set of chunks requested and not yet stored; close
// says no more will be added, and its channel is closed once the set is
// then empty.
type outstanding struct {
	mu     sync.Mutex
	ids    map[id]struct{}
	closed bool
	empty  chan struct{}
}

func newOutstanding() *outstanding {
	return &outstanding{ids: map[id]struct{}{}, empty: make(chan struct{})}
}

func (o *outstanding) add(ids []id) {
	o.mu.Lock()
	for _, b := range ids {
		o.ids[b] = struct{}{}
	}
	o.mu.Unlock()
}

func (o *outstanding) remove(b id) {
	o.mu.Lock()
	delete(o.ids, b)
	o.settle()
	o.mu.Unlock()
}

// close ends the additions and returns the channel closed once every
// chunk is stored.
func (o *outstanding) close() <-chan struct{} {
	o.mu.Lock()
	o.closed = true
	o.settle()
	o.mu.Unlock()
	return o.empty
}

func (o *outstanding) settle() {
	if o.closed && len(o.ids) == 0 {
		select {
		case <-o.empty:
		default:
			close(o.empty)
		}
	}
}
