package client

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// localTransport calls a *chunk.Service in this process. It keeps the gRPC
// server's contract (services/chunk/grpc.go): per stream at most window
// chunks are being stored or read ahead, results come in request order,
// and errors carry the same codes, so the conformance suite cannot tell
// the two apart.
type localTransport struct {
	svc    *chunk.Service
	window int
}

func (t *localTransport) findMissing(ctx context.Context, ids []ID, encrypted bool) ([]ID, error) {
	if encrypted {
		ctx = chunk.Encrypted(ctx)
	}
	return t.svc.FindMissing(ctx, ids)
}

func (t *localTransport) stat(ctx context.Context, id ID) (*chunkbridgev1.ChunkInfo, error) {
	return t.svc.Stat(ctx, id)
}

func (t *localTransport) openStored(ctx context.Context, id ID) (io.ReadCloser, int64, error) {
	return t.svc.OpenStored(ctx, id)
}

type putResult struct {
	created bool
	err     error
}

type localUpload struct {
	ctx     context.Context
	svc     *chunk.Service
	running chan struct{} // one token per Put running
	results chan chan putResult

	// mu orders starting a Put against recv seeing the stream end: once
	// over is set, no Put starts, so recv can wait for every Put started.
	mu   sync.Mutex
	over bool
}

func (t *localTransport) openUpload(ctx context.Context, window int) (upStream, error) {
	return &localUpload{ctx: ctx, svc: t.svc, running: make(chan struct{}, t.window), results: make(chan chan putResult, window)}, nil
}

func (l *localUpload) send(u *Upload) error {
	select {
	case l.running <- struct{}{}:
	case <-l.ctx.Done():
		return l.ctx.Err()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.over || l.ctx.Err() != nil {
		<-l.running
		return l.ctx.Err()
	}
	res := make(chan putResult, 1)
	select {
	case l.results <- res:
	default:
		<-l.running
		return io.ErrShortBuffer // more unacknowledged chunks than the Uploader's window
	}
	up := chunk.Upload{ID: u.ID, Algorithm: u.Algorithm, Encoding: u.Encoding, Data: u.Data, Size: u.Size}
	ctx := l.ctx
	if u.Encrypted {
		ctx = chunk.Encrypted(ctx)
	}
	go func() {
		var r putResult
		defer func() { <-l.running; res <- r }()
		defer recovered("put", up.ID, &r.err)
		r.created, r.err = l.svc.Put(ctx, up)
	}()
	return nil
}

// recv, once the stream's context has ended, still waits for every Put
// started (each returns promptly on the context): the stream error it
// then returns lets the Uploader call done for the chunks, and done hands
// a chunk's buffer back to its owner, which may refill it while a Put
// still hashed or compressed it.
func (l *localUpload) recv() (bool, error, error) {
	select {
	case res := <-l.results:
		r := <-res
		return r.created, r.err, nil
	case <-l.ctx.Done():
	}
	l.mu.Lock()
	l.over = true
	l.mu.Unlock()
	for {
		select {
		case res := <-l.results:
			<-res
		default:
			return false, nil, l.ctx.Err()
		}
	}
}

func (l *localUpload) closeSend() error { return nil }

type localDownload struct {
	ctx     context.Context
	pending chan chan Chunk
}

// openDownload reads ahead at most window chunks, as the gRPC server does;
// a caller that stops reading stops the reads.
func (t *localTransport) openDownload(ctx context.Context, ids []ID, opts DownloadOptions) (downStream, error) {
	d := &localDownload{ctx: ctx, pending: make(chan chan Chunk, t.window-1)}
	gctx := ctx
	if opts.Encrypted {
		gctx = chunk.Encrypted(ctx)
	}
	go func() {
		defer close(d.pending)
		for _, id := range ids {
			res := make(chan Chunk, 1)
			select {
			case d.pending <- res:
			case <-ctx.Done():
				return
			}
			go func() {
				var c chunk.Chunk
				var err error
				defer func() {
					res <- Chunk{ID: id, Algorithm: c.Algorithm, Size: c.Size, Encoding: c.Encoding, Data: c.Data, Err: err}
				}()
				defer recovered("get", id, &err)
				c, err = t.svc.Get(gctx, id, opts.Raw)
			}()
		}
	}()
	return d, nil
}

func (d *localDownload) recv() (Chunk, error) {
	select {
	case res, ok := <-d.pending:
		if !ok {
			if err := d.ctx.Err(); err != nil {
				return Chunk{}, err
			}
			return Chunk{}, io.EOF
		}
		select {
		case c := <-res:
			return c, nil
		case <-d.ctx.Done():
			return Chunk{}, d.ctx.Err()
		}
	case <-d.ctx.Done():
		return Chunk{}, d.ctx.Err()
	}
}

// recovered turns a panic in a service call into that call's error, as the
// gRPC server's recovery interceptor does for the gRPC transport: one bad
// chunk must not end the process. Deferred directly by the call's goroutine.
func recovered(op string, id ID, err *error) {
	if p := recover(); p != nil {
		slog.Error("panic in the chunk service", "op", op, "chunk", id.String(), "panic", p, "stack", string(debug.Stack()))
		*err = fmt.Errorf("chunk %s: %s: %w", id, op, apierr.ErrInternal)
	}
}
