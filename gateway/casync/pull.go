package casync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// indexPiece is the INDEX payload size casync itself uses.
const indexPiece = 64 << 10

// fetchers is how many downloads run at once per session, so
// that a high-priority request never waits behind a whole batch.
const fetchers = 2

// guessChunkSize sizes the first batch of a session before any chunk has
// arrived: casync's default average chunk.
const guessChunkSize = 64 << 10

// id is a chunk id: casync's ids are the client's 32-byte ids, as they
// are on the wire.
type id = client.ID

// pull serves a client that reads: the index if it asks for it, and the
// chunks it REQUESTs, high priority first. It ends when the client closes
// or says GOODBYE (casync's client does not).
func (c *conv) pull(ctx context.Context) error {
	if c.remote&caproto.PullIndex != 0 {
		c.goWork(c.sendIndex)
	}
	q := newRequestQueue()
	maxRequested := session.OrDefault(c.h.MaxRequested, 4<<20)
	ra := newReadAhead(session.OrDefault(c.h.ReadAheadBytes, 8<<20), c.s)
	for range fetchers {
		c.goWork(func(ctx context.Context) error { return c.fetch(ctx, q, ra) })
	}
	for {
		m, err := c.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *caproto.Request:
			if c.remote&caproto.PullChunks == 0 {
				return abortf(syscall.EBADMSG, "REQUEST without PULL_CHUNKS in the client's HELLO")
			}
			if n := q.add(m.IDs, m.HighPriority()); n > maxRequested {
				return abortf(syscall.ENOBUFS, "more than %d chunks requested in one session", maxRequested)
			}
		case *caproto.Goodbye:
			return nil
		case *caproto.Abort:
			c.log.Info("client aborted", "errno", m.Errno, "reason", m.Reason)
			return nil
		default:
			return abortf(syscall.EBADMSG, "unexpected %s in a pull session", m.Type())
		}
	}
}

// sendIndex streams the catalog's index as INDEX frames and INDEX_EOF.
func (c *conv) sendIndex(ctx context.Context) error {
	r, err := c.h.Catalog.GetIndex(ctx, c.args.Index)
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.WriteTo(indexFrames{ctx: ctx, c: c}); err != nil {
		return err
	}
	return c.send(ctx, &caproto.IndexEOF{})
}

// indexFrames sends what is written to it as INDEX frames of at most
// indexPiece bytes.
type indexFrames struct {
	ctx context.Context
	c   *conv
}

func (w indexFrames) Write(data []byte) (int, error) {
	total := len(data)
	for len(data) > 0 {
		n := min(len(data), indexPiece)
		if err := w.c.send(w.ctx, &caproto.Index{Data: data[:n]}); err != nil {
			return total - len(data), err
		}
		data = data[n:]
	}
	return total, nil
}

// fetch answers queued requests in batches: a batch of ids is one
// Download, read ahead by the chunk service, not one round trip per
// chunk. A batch is as many ids as the read-ahead budget has room for at
// the largest chunk size the session has seen, and every chunk holds its bytes of the
// budget until the writer has queued it: a client that reads slowly holds
// the downloads back instead of having them buffered.
func (c *conv) fetch(ctx context.Context, q *requestQueue, ra *readAhead) error {
	for {
		n, est, err := ra.reserve(ctx, c.h.batchSize())
		if err != nil {
			return nil // the session is over
		}
		batch := q.take(n)
		ra.unreserve(n-len(batch), est)
		if len(batch) == 0 {
			select {
			case <-q.notify:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		if err := c.fetchBatch(ctx, batch, est, ra); err != nil {
			return err
		}
	}
}

// fetchBatch downloads one batch, as stored, est bytes of ra held for
// each. A chunk larger than its estimate ends its Download (the rest of
// the estimates go back) and the rest of the batch is planned again at the
// new estimate: a batch overdraws the budget once at most.
func (c *conv) fetchBatch(ctx context.Context, batch []id, est int64, ra *readAhead) error {
	n := len(batch)
	for {
		done, err := c.fetchPart(ctx, batch[:n], est, ra)
		if err != nil || done == len(batch) {
			return err
		}
		batch = batch[done:]
		if n, est, err = ra.reserve(ctx, len(batch)); err != nil {
			return nil // the session is over
		}
	}
}

// fetchPart downloads batch, holding its estimated bytes of ra and giving
// back each chunk's share once the chunk is queued. It returns how many
// chunks it answered: fewer than asked once one overdrew its estimate.
func (c *conv) fetchPart(ctx context.Context, batch []id, est int64, ra *readAhead) (int, error) {
	pending := len(batch) // estimates still held
	defer func() { ra.unreserve(pending, est) }()
	d := c.h.Chunks.Download(ctx, batch, client.DownloadOptions{})
	defer d.Close()
	for i := 0; ; i++ {
		ch, err := d.Next()
		if errors.Is(err, io.EOF) {
			if i != len(batch) {
				return i, fmt.Errorf("the chunk service answered %d of %d chunks", i, len(batch))
			}
			return i, nil
		}
		if err != nil {
			return i, err
		}
		if i >= len(batch) || ch.ID != batch[i] {
			return i, fmt.Errorf("the chunk service answered chunk %s out of the order asked for", ch.ID)
		}
		size := int64(len(ch.Data))
		ra.received(size, est) // the shared budget holds size for it now
		pending--
		m, err := c.answer(ctx, ch)
		held := size
		if chunk, ok := m.(*caproto.Chunk); ok && err == nil {
			// Fetched again raw: its bytes, not the stored ones, are held.
			if d := int64(len(chunk.Data)) - held; d > 0 {
				err = c.s.HoldNow(d)
			} else {
				c.s.Unhold(-d)
			}
			held = int64(len(chunk.Data))
		} else {
			c.s.Unhold(held)
			held = 0
		}
		if err == nil {
			// A CHUNK frame is its head and the data as downloaded, never
			// copied: the writer gives the held bytes back once written.
			var bufs [][]byte
			if chunk, ok := m.(*caproto.Chunk); ok {
				bufs = [][]byte{chunk.EncodeHead(nil), chunk.Data}
			} else {
				bufs = [][]byte{m.Encode(nil)}
			}
			var n int64
			for _, b := range bufs {
				n += int64(len(b))
			}
			full := c.s.Queued()+n > c.queueBytes
			if full {
				ra.waiting(1) // the writer's queue is full: this fetcher waits
			}
			h := held
			if c.s.SendBuffers(ctx, func() { c.s.Unhold(h) }, bufs...) != nil {
				err = errSessionOver
			}
			if full {
				ra.waiting(-1)
			}
		} else {
			c.s.Unhold(held)
		}
		ra.done(size)
		if errors.Is(err, errSessionOver) {
			return len(batch), nil // its cause is elsewhere
		}
		if err != nil {
			return i, err
		}
		if size > est && i+1 < len(batch) {
			return i + 1, nil // planned again at the new largest size
		}
	}
}

var errSessionOver = errors.New("session over")

// answer is the frame for one downloaded chunk: CHUNK, or MISSING. A
// chunk goes as stored (a zstd frame, not decoded here) when that fits one
// CHUNK frame. A chunk of nearly format.MaxChunk incompressible bytes is
// stored slightly larger than its data (zstd's raw blocks have headers):
// that one is fetched again, raw, and sent uncompressed, which casync
// accepts as well.
func (c *conv) answer(ctx context.Context, ch client.Chunk) (caproto.Message, error) {
	switch {
	case ch.Err == nil:
	case errors.Is(ch.Err, apierr.ErrNotFound):
		c.h.Metrics.chunk("missing", 0)
		return &caproto.Missing{ID: ch.ID}, nil
	default:
		return nil, ch.Err
	}
	if len(ch.Data) <= caproto.MaxChunkData {
		c.h.Metrics.chunk("sent", len(ch.Data))
		return &caproto.Chunk{Flags: caproto.ChunkCompressed, ID: ch.ID, Data: ch.Data}, nil
	}
	stored := len(ch.Data)
	if ch.Size > caproto.MaxChunkData {
		return nil, abortf(syscall.EFBIG, "chunk %s: %d bytes do not fit one CHUNK frame", ch.ID, ch.Size)
	}
	ch.Data = nil // not held while the raw form is fetched
	raw, err := c.fetchRaw(ctx, ch.ID)
	if err != nil {
		return nil, err
	}
	if len(raw) > caproto.MaxChunkData {
		return nil, abortf(syscall.EFBIG, "chunk %s: neither its %d stored bytes nor its %d bytes of data fit one CHUNK frame", ch.ID, stored, len(raw))
	}
	c.h.Metrics.chunk("sent", len(raw))
	return &caproto.Chunk{ID: ch.ID, Data: raw}, nil
}

// fetchRaw downloads one chunk uncompressed.
func (c *conv) fetchRaw(ctx context.Context, want id) ([]byte, error) {
	d := c.h.Chunks.Download(ctx, []id{want}, client.DownloadOptions{Raw: true})
	defer d.Close()
	ch, err := d.Next()
	switch {
	case err != nil:
		return nil, err
	case ch.ID != want:
		return nil, fmt.Errorf("the chunk service answered chunk %s for %s", ch.ID, want)
	case ch.Err != nil:
		// Deleted in between: MISSING would be a lie about a chunk just
		// seen, so the session fails with the service's reason.
		return nil, ch.Err
	}
	return ch.Data, nil
}

// testHookPullStalled, if set, runs once per session when all its
// fetchers wait: for the writer's queue or for read-ahead room.
var testHookPullStalled func()

// readAhead bounds the bytes a pull has asked the chunk service for and
// not yet queued for the writer: the session's share. The same bytes are
// held in the process's shared budget (session.Hold) from the moment a
// batch is asked for until each chunk's frame is written or dropped. Sizes are known only on arrival, so a
// batch holds an estimate per chunk (the largest chunk the session has
// seen, never the average, which one tiny chunk drives to a byte; the
// first batch, before any arrival, is at most two chunks), and each chunk,
// on arrival, trades its estimate for its real size. Only new batches wait
// for room; a chunk larger than its estimate overdraws and ends its batch
// (fetchBatch plans the rest again), so a fetcher never waits on another
// while overdrawn: at most one chunk per fetcher beyond the budget.
type readAhead struct {
	limit int64
	freed chan struct{}
	s     *session.Session

	mu      sync.Mutex
	used    int64 // estimates held plus sizes of chunks arrived, not queued
	largest int64 // the largest chunk arrived, 0 before the first
	waiters int   // fetchers waiting
	stalled bool  // all fetchers have waited at once
}

func newReadAhead(limit int64, s *session.Session) *readAhead {
	return &readAhead{limit: limit, freed: make(chan struct{}, fetchers), s: s}
}

// estimate is the bytes held per chunk asked for.
func (ra *readAhead) estimate() int64 {
	if ra.largest == 0 {
		return max(ra.limit/2, 1)
	}
	return ra.largest
}

// reserve waits until the budget has room and reserves estimates for up
// to most chunks (at least one), returning how many and the estimate.
func (ra *readAhead) reserve(ctx context.Context, most int) (int, int64, error) {
	for {
		ra.mu.Lock()
		if free := ra.limit - ra.used; free > 0 || ra.used == 0 {
			est := ra.estimate()
			n := int(min(int64(most), max(free/est, 1)))
			ra.used += int64(n) * est
			ra.mu.Unlock()
			// Then the process's share, before anything is fetched.
			if err := ra.s.Hold(ctx, int64(n)*est); err != nil {
				ra.mu.Lock()
				ra.used -= int64(n) * est
				ra.mu.Unlock()
				ra.wake()
				return 0, 0, err
			}
			return n, est, nil
		}
		ra.mu.Unlock()
		ra.waiting(1)
		select {
		case <-ra.freed:
			ra.waiting(-1)
		case <-ctx.Done():
			ra.waiting(-1)
			return 0, 0, ctx.Err()
		}
	}
}

// received trades one chunk's estimate for its size, in the shared
// budget too: a chunk larger than its estimate overdraws it by the
// difference (one chunk per fetcher at most).
func (ra *readAhead) received(size, est int64) {
	ra.mu.Lock()
	ra.used += size - est
	ra.largest = max(ra.largest, size)
	ra.mu.Unlock()
	if size > est {
		ra.s.HoldNow(size - est)
	} else {
		ra.s.Unhold(est - size)
	}
}

// done gives back an arrived chunk's bytes: it is queued, or dropped.
func (ra *readAhead) done(size int64) {
	ra.mu.Lock()
	ra.used -= size
	ra.mu.Unlock()
	ra.wake()
}

// unreserve gives back n estimates of chunks not asked for or not arrived.
func (ra *readAhead) unreserve(n int, est int64) {
	if n == 0 {
		return
	}
	ra.mu.Lock()
	ra.used -= int64(n) * est
	ra.mu.Unlock()
	ra.s.Unhold(int64(n) * est)
	ra.wake()
}

func (ra *readAhead) waiting(d int) {
	ra.mu.Lock()
	ra.waiters += d
	fire := ra.waiters == fetchers && !ra.stalled
	if fire {
		ra.stalled = true
	}
	ra.mu.Unlock()
	if fire && testHookPullStalled != nil {
		testHookPullStalled()
	}
}

func (ra *readAhead) wake() {
	for range fetchers {
		select {
		case ra.freed <- struct{}{}:
		default:
		}
	}
}

// requestQueue holds requested chunk ids in two FIFOs and deduplicates them
// as casync's own server does: a chunk queued at the same priority is
// ignored, a queued low-priority chunk re-requested at high priority moves
// up, and a chunk already taken for sending is not sent again.
type requestQueue struct {
	mu        sync.Mutex
	high, low []id
	state     map[id]uint8
	notify    chan struct{}
}

const (
	queuedLow uint8 = iota + 1
	queuedHigh
	taken
)

func newRequestQueue() *requestQueue {
	return &requestQueue{state: map[id]uint8{}, notify: make(chan struct{}, 1)}
}

// add queues the ids of a REQUEST and returns how many distinct ids the
// session has seen.
func (q *requestQueue) add(ids [][caproto.IDSize]byte, high bool) int {
	q.mu.Lock()
	for _, raw := range ids {
		c := id(raw)
		switch st := q.state[c]; {
		case st == 0 && !high:
			q.state[c] = queuedLow
			q.low = append(q.low, c)
		case (st == 0 || st == queuedLow) && high:
			// A low entry left behind is skipped when popped.
			q.state[c] = queuedHigh
			q.high = append(q.high, c)
		}
	}
	n := len(q.state)
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return n
}

// take removes up to n ids, high priority first, and marks them taken.
func (q *requestQueue) take(n int) []id {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []id
	pop := func(fifo *[]id, want uint8) {
		for len(out) < n && len(*fifo) > 0 {
			c := (*fifo)[0]
			*fifo = (*fifo)[1:]
			if q.state[c] == want {
				q.state[c] = taken
				out = append(out, c)
			}
		}
		if len(*fifo) == 0 {
			*fifo = nil // let the backing array go
		}
	}
	pop(&q.high, queuedHigh)
	pop(&q.low, queuedLow)
	if len(q.high)+len(q.low) > 0 {
		select { // more work: wake another fetcher
		case q.notify <- struct{}{}:
		default:
		}
	}
	return out
}
