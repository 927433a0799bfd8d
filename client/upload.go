package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sync/semaphore"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// UploadOptions bound an Uploader.
type UploadOptions struct {
	// Window is the most chunks sent and not yet acknowledged (default 16).
	Window int
	// WindowBytes is the most payload bytes sent and not yet acknowledged
	// (default 64 MiB). A chunk larger than it still goes, alone.
	WindowBytes int64
}

// Result is a chunk's acknowledgement: created is false for a chunk that
// was already stored; Err is the chunk's own failure, or the stream's.
type Result struct {
	ID      ID
	Created bool
	Err     error
}

// Uploader stores chunks over one stream and acknowledges them in the
// order they were put. Put blocks while the window is full, so a fast
// producer is held back instead of the process's memory growing.
type Uploader struct {
	ctx    context.Context
	cancel context.CancelFunc
	s      upStream
	slots  chan struct{}
	bytes  *semaphore.Weighted
	limit  int64
	queue  chan pending // in send order; the acknowledger reads it
	acked  chan struct{}

	mu     sync.Mutex
	failed error // the stream's error; every later Put returns it
	closed bool

	// sendMu keeps a send and closeSend apart, which a gRPC stream
	// requires.
	sendMu sync.Mutex
}

type pending struct {
	id   ID
	size int64
	done func(Result)
}

// NewUploader opens an upload stream; it lives until Close or ctx ends.
func (c *Chunks) NewUploader(ctx context.Context, opts UploadOptions) (*Uploader, error) {
	if opts.Window <= 0 {
		opts.Window = 16
	}
	if opts.WindowBytes <= 0 {
		opts.WindowBytes = 64 << 20
	}
	ctx, cancel := context.WithCancel(ctx)
	s, err := c.t.openUpload(ctx, opts.Window)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("open an upload stream to the chunk service: %w", apierr.FromStatus(err))
	}
	u := &Uploader{
		ctx: ctx, cancel: cancel, s: s,
		slots: make(chan struct{}, opts.Window),
		bytes: semaphore.NewWeighted(opts.WindowBytes), limit: opts.WindowBytes,
		queue: make(chan pending, opts.Window),
		acked: make(chan struct{}),
	}
	go u.acknowledge()
	return u, nil
}

// Put sends one chunk. done is called once with its result, in the order
// of the Puts, from one goroutine: it must not block for long, and must
// not call Put. The Uploader owns up.Data until done is called. Put
// returns an error, and done is not called, when the chunk was not queued:
// ctx ended, the stream failed earlier, or the Uploader was closed.
func (u *Uploader) Put(ctx context.Context, up Upload, done func(Result)) error {
	if err := u.err(); err != nil {
		return err
	}
	select {
	case u.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-u.ctx.Done():
		return u.errOr(u.ctx.Err())
	}
	size := min(int64(len(up.Data)), u.limit)
	if err := u.bytes.Acquire(ctx, size); err != nil {
		<-u.slots
		return err
	}
	// Queued before it is sent, so that the acknowledger, which waits for
	// results in queue order, knows whose result comes next. The slot
	// held leaves room in the queue, so this does not block under mu;
	// under mu, a Put racing Close or Abort cannot send on the closed
	// queue.
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		u.bytes.Release(size)
		<-u.slots
		return u.errOr(errClosed)
	}
	u.queue <- pending{id: up.ID, size: size, done: done}
	u.mu.Unlock()
	u.sendMu.Lock()
	err := u.s.send(&up)
	u.sendMu.Unlock()
	switch {
	case errors.Is(err, io.EOF):
		// The server ended the stream: gRPC's Send says only io.EOF, and
		// the real status comes from Recv, which the acknowledger
		// reports for this chunk and the stream.
	case err != nil:
		u.fail(fmt.Errorf("chunk %s: send to the chunk service: %w", up.ID, apierr.FromStatus(err)))
	}
	return nil
}

// errClosed is Put's answer after Close or Abort.
var errClosed = errors.New("upload stream closed")

// acknowledge delivers results in order; after a stream error every chunk
// still queued gets that error.
func (u *Uploader) acknowledge() {
	defer close(u.acked)
	for p := range u.queue {
		r := Result{ID: p.id}
		if err := u.err(); err != nil {
			r.Err = err
		} else {
			var itemErr, err error
			r.Created, itemErr, err = u.s.recv()
			switch {
			case err != nil:
				u.fail(fmt.Errorf("chunk %s: upload stream: %w", p.id, apierr.FromStatus(err)))
				r.Err = u.err()
			case itemErr != nil:
				r.Err = apierr.FromStatus(itemErr)
			}
		}
		u.bytes.Release(p.size)
		<-u.slots
		p.done(r)
	}
}

func (u *Uploader) fail(err error) {
	u.mu.Lock()
	if u.failed == nil {
		u.failed = err
	}
	u.mu.Unlock()
	u.cancel()
}

func (u *Uploader) err() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.failed
}

func (u *Uploader) errOr(err error) error {
	if e := u.err(); e != nil {
		return e
	}
	return err
}

// Close waits until every chunk put has been acknowledged and ends the
// stream. It returns the stream's error, if it failed; chunks' own errors
// went to their done functions. A Put after (or racing) Close or Abort
// returns an error.
func (u *Uploader) Close() error {
	u.mu.Lock()
	closed := u.closed
	u.closed = true
	u.mu.Unlock()
	if !closed {
		close(u.queue)
	}
	<-u.acked
	if u.err() == nil {
		u.sendMu.Lock()
		err := u.s.closeSend()
		u.sendMu.Unlock()
		if err != nil && !errors.Is(err, context.Canceled) {
			u.fail(fmt.Errorf("close the upload stream: %w", apierr.FromStatus(err)))
		}
	}
	err := u.err()
	u.cancel()
	return err
}

// Abort ends the stream at once; chunks not yet acknowledged get an error.
func (u *Uploader) Abort() {
	u.fail(errors.New("upload aborted"))
	u.Close()
}
