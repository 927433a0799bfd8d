package pmxclient

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// Download's window.
const (
	// MaxDownloadBatch is the most digests one DownloadChunks request asks
	// for.
	MaxDownloadBatch = 256
	// MaxDownloadBytesInFlight bounds the chunk data a Download has asked
	// for but not handed out yet, estimated from the largest chunk seen so
	// far (at first 4 MiB).
	MaxDownloadBytesInFlight = 64 << 20
	// maxDownloadRequests is the most DownloadChunks requests in flight.
	maxDownloadRequests  = 8
	initialChunkEstimate = 4 << 20
)

// Download fetches the chunks named by digests and calls fn(i, data) for
// each, in order, with i the index into digests. Every chunk's SHA-256 is
// checked against its digest before fn sees it. data is valid only during
// the call.
//
// Requests are pipelined: several DownloadChunks of up to MaxDownloadBatch
// digests are in flight, about MaxDownloadBytesInFlight of data at most.
// Download stops at the first error: a missing chunk (the server's Error),
// a chunk that fails verification, or fn's error, which it returns.
func (c *Client) Download(ctx context.Context, digests []Digest, fn func(i int, data []byte) error) error {
	d := downloader{c: c, digests: digests, est: initialChunkEstimate}
	defer d.abandon()
	for d.consumed < len(digests) {
		if err := d.issue(ctx); err != nil {
			return err
		}
		p, err := d.reqs[0].take(ctx, d.c)
		if err != nil {
			return err
		}
		if p == nil { // the request is complete
			d.reqs = d.reqs[1:]
			continue
		}
		i := d.consumed
		if got := Digest(sha256.Sum256(p.Data)); got != digests[i] {
			return fmt.Errorf("pmx: download of chunk %d (%s): the server sent %d bytes that hash to %s; refused", i, digests[i], len(p.Data), got)
		}
		if !d.seen || len(p.Data) > d.est {
			d.est, d.seen = len(p.Data), true
		}
		if err := fn(i, p.Data); err != nil {
			return err
		}
		// data is fn's only during the call: the reader may fill the
		// buffer again.
		d.c.r.Release(p)
		d.consumed++
	}
	return nil
}

// downloader keeps a Download's requests in flight.
type downloader struct {
	c        *Client
	digests  []Digest
	reqs     []*downloadHandler // in flight or not yet consumed, in order
	issued   int                // digests asked for
	consumed int                // digests handed to fn
	est      int                // largest chunk seen, or the initial guess
	seen     bool               // est is from a chunk
}

// issue sends requests while the window has room.
func (d *downloader) issue(ctx context.Context) error {
	limit := max(1, MaxDownloadBytesInFlight/d.est)
	batch := min(MaxDownloadBatch, max(1, limit/4))
	for d.issued < len(d.digests) && len(d.reqs) < maxDownloadRequests {
		n := min(batch, len(d.digests)-d.issued)
		if outstanding := d.issued - d.consumed; outstanding > 0 && outstanding+n > limit {
			return nil
		}
		first := d.issued
		ds := d.digests[first : first+n]
		h := &downloadHandler{first: first, digests: ds, signal: make(chan struct{}, 1)}
		if _, err := d.c.request(ctx, h, func(id uint8) pmxproto.Packet {
			return &pmxproto.DownloadChunks{ID: id, Digests: ds}
		}); err != nil {
			return fmt.Errorf("pmx: download of chunks %d..%d: %w", first, first+n-1, err)
		}
		d.reqs = append(d.reqs, h)
		d.issued += n
	}
	return nil
}

// abandon makes the requests still in flight drop what arrives.
func (d *downloader) abandon() {
	for _, h := range d.reqs {
		h.abandon()
	}
}

// downloadHandler queues the Chunk packets of one DownloadChunks request
// for the Download that consumes them; the reader never waits for it.
type downloadHandler struct {
	first   int      // index of digests[0] in the Download
	digests []Digest // this request's digests
	signal  chan struct{}

	mu        sync.Mutex
	queue     []*pmxproto.Chunk
	received  int   // Chunk packets so far
	err       error // the request failed; set once
	abandoned bool  // nobody consumes: drop data
}

func (h *downloadHandler) deliver(p pmxproto.Packet) (disposition, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer h.notify()
	switch p := p.(type) {
	case *pmxproto.Chunk:
		if h.received >= len(h.digests) {
			return keep, unexpected(fmt.Sprintf("DownloadChunks of %d chunks after %d chunks", len(h.digests), h.received), p)
		}
		i := h.received
		h.received++
		switch {
		case h.err != nil || h.abandoned:
		case p.Offset != uint64(i) || p.Digest != h.digests[i]:
			h.err = fmt.Errorf("pmx: download of chunk %d (%s): the server's reply says offset %d, digest %s; refused",
				h.first+i, h.digests[i], p.Offset, p.Digest)
		default:
			h.queue = append(h.queue, p)
		}
		if h.received == len(h.digests) {
			return release, nil
		}
		return keep, nil
	case *pmxproto.Error:
		if h.err == nil {
			i := min(h.received, len(h.digests)-1)
			h.err = serverError(fmt.Sprintf("DownloadChunks at chunk %d (%s)", h.first+i, h.digests[i]), p)
		}
		h.received = len(h.digests)
		return release, nil
	}
	return keep, unexpected("DownloadChunks", p)
}

func (h *downloadHandler) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err == nil {
		h.err = fmt.Errorf("pmx: download of chunks %d..%d: %w", h.first, h.first+len(h.digests)-1, err)
	}
	h.notify()
}

func (h *downloadHandler) notify() {
	select {
	case h.signal <- struct{}{}:
	default:
	}
}

func (h *downloadHandler) abandon() {
	h.mu.Lock()
	h.abandoned = true
	h.queue = nil
	h.mu.Unlock()
}

// take returns the next chunk in order, nil once all have been taken, or
// the request's error once the chunks before it have been taken.
func (h *downloadHandler) take(ctx context.Context, c *Client) (*pmxproto.Chunk, error) {
	for {
		h.mu.Lock()
		switch {
		case len(h.queue) > 0:
			p := h.queue[0]
			h.queue[0] = nil
			h.queue = h.queue[1:]
			h.mu.Unlock()
			return p, nil
		case h.err != nil:
			h.mu.Unlock()
			return nil, h.err
		case h.received == len(h.digests):
			h.mu.Unlock()
			return nil, nil
		}
		h.mu.Unlock()
		select {
		case <-h.signal:
		case <-ctx.Done():
			return nil, fmt.Errorf("pmx: download: %w", context.Cause(ctx))
		case <-c.done:
			// The reader failed h before done closed; look again.
			select {
			case <-h.signal:
			default:
				return nil, c.Err()
			}
		}
	}
}
