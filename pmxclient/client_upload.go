package pmxclient

import (
	"context"
	"fmt"
	"sync"

	"golang.org/x/sync/semaphore"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// MaxUploadBytesInFlight bounds the chunk data that a group of uploads has
// sent but the server has not acknowledged yet. Together with the 256 ids it
// is the upload window.
const MaxUploadBytesInFlight = 64 << 20

// Uploads is a group of pipelined chunk uploads: Upload sends and returns
// at once, and Wait waits for the server's answers. Groups are independent,
// so two backups on one Client do not see each other's errors. Its methods
// are safe for concurrent use.
type Uploads struct {
	c     *Client
	bytes *semaphore.Weighted

	mu       sync.Mutex
	inflight int
	idle     chan struct{} // closed while inflight == 0
	err      error         // the first failure not yet returned by Wait
	failed   int           // failures since then
}

// NewUploads returns an empty group of uploads on c.
func (c *Client) NewUploads() *Uploads {
	idle := make(chan struct{})
	close(idle)
	return &Uploads{c: c, bytes: semaphore.NewWeighted(MaxUploadBytesInFlight), idle: idle}
}

// Upload uploads one chunk through the Client's own group; see
// Uploads.Upload.
func (c *Client) Upload(ctx context.Context, digest Digest, data []byte) error {
	return c.uploads.Upload(ctx, digest, data)
}

// Wait waits for the uploads of the Client's own group; see Uploads.Wait.
func (c *Client) Wait(ctx context.Context) error { return c.uploads.Wait(ctx) }

// Upload sends an UploadChunk of data (1..pmxproto.MaxUploadData bytes) under
// its SHA-256 digest, and returns once it is written, without waiting for
// the server's Ok: data may be reused then. It blocks while all ids or
// MaxUploadBytesInFlight bytes are in flight. It returns an error if the
// upload cannot be sent, or at once if an earlier upload of the group failed
// and Wait has not reported it yet; the server's answer to this upload
// reaches Wait.
//
// The server stores chunks in the order they arrive, so a backup file entry
// sent after Upload may reference the chunk before its Ok arrives.
func (u *Uploads) Upload(ctx context.Context, digest Digest, data []byte) error {
	if len(data) == 0 || len(data) > pmxproto.MaxUploadData {
		return fmt.Errorf("pmx: upload of chunk %s: %d bytes; want 1..%d", digest, len(data), pmxproto.MaxUploadData)
	}
	if err := u.pendingErr(); err != nil {
		return err
	}
	n := int64(min(len(data), MaxUploadBytesInFlight))
	if err := u.bytes.Acquire(ctx, n); err != nil {
		return fmt.Errorf("pmx: upload of chunk %s: %w", digest, err)
	}
	h := &uploadHandler{u: u, digest: digest, n: n}
	u.begin()
	_, err := u.c.request(ctx, h, func(id uint8) pmxproto.Packet {
		return &pmxproto.UploadChunk{ID: id, Digest: digest, Data: data}
	})
	if err != nil {
		return fmt.Errorf("pmx: upload of chunk %s: %w", digest, err)
	}
	return nil
}

// Wait waits until every upload of the group has been answered, and returns
// the first failure since the last Wait (with the number of others), naming
// the chunk; nil if all were stored. A failure is reported once.
func (u *Uploads) Wait(ctx context.Context) error {
	for {
		u.mu.Lock()
		if u.inflight == 0 {
			err := u.takeErr()
			u.mu.Unlock()
			return err
		}
		idle := u.idle
		u.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return fmt.Errorf("pmx: waiting for uploads: %w", context.Cause(ctx))
		}
	}
}

// InFlight returns the number of uploads not answered yet.
func (u *Uploads) InFlight() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.inflight
}

func (u *Uploads) pendingErr() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.err != nil {
		return fmt.Errorf("pmx: not uploading: an earlier upload failed: %w", u.err)
	}
	return nil
}

// takeErr returns and clears the recorded failure; u.mu is held.
func (u *Uploads) takeErr() error {
	err := u.err
	if u.failed > 0 {
		err = fmt.Errorf("%w (and %d more uploads failed)", err, u.failed)
	}
	u.err, u.failed = nil, 0
	return err
}

func (u *Uploads) begin() {
	u.mu.Lock()
	if u.inflight == 0 {
		u.idle = make(chan struct{})
	}
	u.inflight++
	u.mu.Unlock()
}

func (u *Uploads) finish(n int64, err error) {
	u.bytes.Release(n)
	u.mu.Lock()
	defer u.mu.Unlock()
	if err != nil {
		if u.err == nil {
			u.err = err
		} else {
			u.failed++
		}
	}
	if u.inflight--; u.inflight == 0 {
		close(u.idle)
	}
}

// uploadHandler waits for the answer to one UploadChunk.
type uploadHandler struct {
	u      *Uploads
	digest Digest
	n      int64 // bytes held in the window
}

func (h *uploadHandler) deliver(p pmxproto.Packet) (disposition, error) {
	switch p := p.(type) {
	case *pmxproto.Ok:
		h.u.finish(h.n, nil)
	case *pmxproto.Error:
		h.u.finish(h.n, serverError("UploadChunk of chunk "+h.digest.String(), p))
	default:
		return keep, unexpected("UploadChunk of chunk "+h.digest.String(), p)
	}
	return release, nil
}

func (h *uploadHandler) fail(err error) {
	h.u.finish(h.n, fmt.Errorf("pmx: upload of chunk %s: no answer: %w", h.digest, err))
}
