package casync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
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
	// acknowledged, whatever their size (PushBytes bounds their bytes):
	// the Uploader's window.
	maxUnacked = 4096
)

// pushing is what the parts of a push hand each other. The reader (the
// session's main loop) owns the catalog stream's sending side and puts
// chunks to the uploader; the parser owns the index scan and then
// publication; the uploader's acknowledgements, in order, take chunks off
// the outstanding set. They share only channels, the outstanding set and
// a counter.
type pushing struct {
	index *client.IndexWriter
	// uploads holds at most maxUnacked chunks and PushBytes of their
	// bytes unacknowledged: Put waits, and the client is not read, while
	// it is full.
	uploads *client.Uploader
	// refused carries the first chunk the chunk service refused, or the
	// upload stream's failure, to the worker that ends the session.
	refused chan error
	// algorithm carries the index's digest algorithm from the parser to
	// the reader, once.
	algorithm chan chunkbridgev1.DigestAlgorithm
	// outstanding are the index's distinct chunk ids, and which of them
	// are REQUESTed and not yet stored.
	outstanding *outstanding
	// publishing is closed when publication starts, published when the
	// catalog has published the index.
	publishing, published chan struct{}
	stored                atomic.Int64 // chunks this session created
	// distinct ids the index names, and how many of them the store lacked
	// and were requested: the rest were already stored and not sent.
	distinct, requested atomic.Int64
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
		refused:     make(chan error, 1),
		algorithm:   make(chan chunkbridgev1.DigestAlgorithm, 1),
		outstanding: newOutstanding(session.OrDefault(c.h.MaxPushIDs, 4<<20)),
		publishing:  make(chan struct{}),
		published:   make(chan struct{}),
	}
	var err error
	// The name goes with the first piece of the index.
	p.index, err = c.h.Catalog.PutIndex(ctx, c.args.Index)
	if err != nil {
		return fmt.Errorf("index %s: %w", c.args.Index, err)
	}
	p.uploads, err = c.h.Chunks.NewUploader(ctx, client.UploadOptions{Window: maxUnacked, WindowBytes: int64(session.OrDefault(c.h.PushBytes, 16<<20))})
	if err != nil {
		return err
	}
	// Every chunk requested was acknowledged before the index was
	// published; whatever is still in flight when the session ends was
	// for a push that failed.
	defer p.uploads.Abort()
	pr, pw := io.Pipe()
	// Whatever ends the session, the parser must not wait for more index.
	defer pw.CloseWithError(errSessionOver)
	requestChunks := c.remote&caproto.PushIndexChunks != 0 && c.args.Store != ""
	c.goWork(func(ctx context.Context) error { return c.parseAndPublish(ctx, pr, p, requestChunks) })
	c.goWork(func(ctx context.Context) error {
		select {
		case err := <-p.refused:
			return err
		case <-ctx.Done():
			return nil
		}
	})

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
			if _, err := p.index.Write(m.Data); err != nil {
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

// upload sends one chunk to the chunk service once the uploader's window
// leaves room for it: a client faster than the chunk service waits,
// unread, instead of being buffered. The uploader holds the bytes until
// the chunk is acknowledged, and m.Data is the reader's buffer, so it
// gets a copy: the bytes in flight are at most PushBytes and one chunk
// waiting for room.
func (c *conv) upload(ctx context.Context, p *pushing, alg chunkbridgev1.DigestAlgorithm, m *caproto.Chunk) error {
	up := client.Upload{ID: m.ID, Algorithm: alg, Encoding: encodingOf(m), Data: bytes.Clone(m.Data)}
	err := p.uploads.Put(ctx, up, func(r client.Result) { c.acknowledged(ctx, p, r) })
	if err != nil {
		if ctx.Err() != nil {
			return nil // the session is over
		}
		return fmt.Errorf("upload chunk %s: %w", m.ID, err)
	}
	c.h.Metrics.chunk("received", len(m.Data))
	return nil
}

// acknowledged takes a stored chunk off the outstanding set; a refused
// one (its data does not hash to its id: EBADMSG by the errno table) ends
// the session. It runs on the uploader's acknowledger and does not block.
func (c *conv) acknowledged(ctx context.Context, p *pushing, r client.Result) {
	if r.Err != nil {
		if ctx.Err() == nil {
			select {
			case p.refused <- r.Err:
			default: // the session ends with an earlier one
			}
		}
		return
	}
	if r.Created {
		p.stored.Add(1)
	}
	p.outstanding.remove(r.ID)
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
		r.CloseWithError(err) // the reader writing the index fails with err
		return err
	}
	select {
	case <-p.outstanding.close():
	case <-ctx.Done():
		return nil
	}
	close(p.publishing)
	info, err := p.index.Commit()
	if err != nil {
		return fmt.Errorf("publishing index %s: %w", c.args.Index, err)
	}
	close(p.published)
	// "uploaded" are the chunks sent; "created" those the store lacked even
	// then (a concurrent upload may have stored one in between).
	d, up := p.distinct.Load(), p.requested.Load()
	c.log.Info("index published", "chunks", info.ChunkCount, "distinct", d, "uploaded", up,
		"already_stored", d-up, "created", p.stored.Load(), "size", info.Size)
	return c.send(ctx, &caproto.Goodbye{})
}

// parse scans the index as it arrives and requests the chunks the store
// lacks. An index that does not parse is EBADMSG; a failing call of the
// chunk service keeps its own error, and errno.
func (c *conv) parse(ctx context.Context, r io.Reader, p *pushing, request bool) error {
	var batch []id
	var serviceErr error
	flush := func() error {
		if len(batch) == 0 || !request {
			batch = batch[:0]
			return nil
		}
		missing, err := c.h.Chunks.FindMissing(ctx, batch)
		batch = batch[:0]
		if err != nil {
			serviceErr = err
			return err
		}
		// Outstanding before requested: the chunk may be stored at once.
		p.outstanding.add(missing)
		p.requested.Add(int64(len(missing)))
		for len(missing) > 0 {
			n := min(len(missing), requestBatch)
			req := &caproto.Request{IDs: make([][caproto.IDSize]byte, n)}
			for i, m := range missing[:n] {
				req.IDs[i] = m
			}
			if err := c.send(ctx, req); err != nil {
				return errSessionOver
			}
			missing = missing[n:]
		}
		return nil
	}
	err := scanIndexIDs(r, func(alg chunkbridgev1.DigestAlgorithm) {
		p.algorithm <- alg // once: the header is read once
	}, func(b id) error {
		switch fresh, err := p.outstanding.see(b); {
		case err != nil:
			serviceErr = err // not the index's fault: ABORT with it as it is
			return err
		case !fresh:
			return nil
		}
		p.distinct.Add(1)
		batch = append(batch, b)
		if len(batch) == checkBatch {
			return flush()
		}
		return nil
	})
	switch {
	case err == nil:
		return flush()
	case serviceErr != nil, errors.Is(err, errSessionOver):
		return err
	}
	return abortf(syscall.EBADMSG, "index %s: %v", c.args.Index, err)
}

// outstanding is the set of the index's distinct chunk ids (at most max:
// the session's memory grows with it) and, among them, the chunks
// requested and not yet stored; close says no more will be added, and its
// channel is closed once none is then pending. One map serves both, so a
// session keeps each id once.
type outstanding struct {
	mu      sync.Mutex
	ids     map[id]bool // true: requested and not yet stored
	max     int
	pending int // ids that are true
	closed  bool
	empty   chan struct{}
}

func newOutstanding(max int) *outstanding {
	return &outstanding{ids: map[id]bool{}, max: max, empty: make(chan struct{})}
}

// see records an id of the index, reporting whether it is new; an index
// with more than max distinct ids is refused with ENOBUFS.
func (o *outstanding) see(b id) (bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.ids[b]; ok {
		return false, nil
	}
	if len(o.ids) >= o.max {
		return false, abortf(syscall.ENOBUFS, "index references more than %d distinct chunks, the most one push session may hold", o.max)
	}
	o.ids[b] = false
	return true, nil
}

// add marks ids as requested.
func (o *outstanding) add(ids []id) {
	o.mu.Lock()
	for _, b := range ids {
		if !o.ids[b] {
			o.ids[b] = true
			o.pending++
		}
	}
	o.mu.Unlock()
}

// remove marks b as stored; an id never requested stays as it is.
func (o *outstanding) remove(b id) {
	o.mu.Lock()
	if o.ids[b] {
		o.ids[b] = false
		o.pending--
	}
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
	if o.closed && o.pending == 0 {
		select {
		case <-o.empty:
		default:
			close(o.empty)
		}
	}
}
