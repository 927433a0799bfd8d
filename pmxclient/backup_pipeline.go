package pmxclient

import (
	"context"
	"crypto/sha256"
	"io"
	"runtime"
	"time"

	"golang.org/x/sync/errgroup"
)

// backupRun is one backup's pipeline: a reader cuts chunks into buffers
// from a bounded pool, hashers compute digests in parallel, and the
// sender, in input order, uploads new chunks and sends index entries.
type backupRun struct {
	c        *Client
	stream   *Stream
	uploads  *Uploads
	known    map[Digest]struct{} // in the base snapshot, or uploaded in this run
	fixed    bool
	progress func(Stats)
	start    time.Time

	stats        Stats
	lastProgress time.Time
}

// backupJob is one chunk on its way through the pipeline.
type backupJob struct {
	buf    []byte // from the pool; data aliases it
	data   []byte
	digest Digest
	hashed chan struct{} // closed once digest is set
}

func (r *backupRun) pipeline(ctx context.Context, src chunkSource, maxChunk int, readAhead int64) error {
	nbuf := int(max(2, readAhead/int64(maxChunk)))
	pool := newBufPool(nbuf, maxChunk)
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan *backupJob, nbuf)  // in input order, to the sender
	hashq := make(chan *backupJob, nbuf) // to the hashers
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	g, gctx := errgroup.WithContext(pctx)
	g.Go(func() error {
		defer close(jobs)
		defer close(hashq)
		for {
			buf, err := pool.get(gctx)
			if err != nil {
				return err
			}
			data, err := src.next(buf)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			j := &backupJob{buf: buf, data: data, hashed: make(chan struct{})}
			hashq <- j // never blocks: at most nbuf jobs exist
			jobs <- j
		}
	})
	for range workers {
		g.Go(func() error {
			for j := range hashq {
				j.digest = sha256.Sum256(j.data)
				close(j.hashed)
			}
			return nil
		})
	}
	err := r.send(gctx, jobs, pool)
	if err != nil && (ctx.Err() != nil || gctx.Err() == nil) {
		// The sender failed, or the caller gave up. Stop the reader and
		// return now: it may be blocked reading the input, which nothing
		// can interrupt. It stops at its next buffer, in the background;
		// its channels have room for everything it can still send.
		cancel(err)
		return err
	}
	// The jobs ended, or the reader failed (gctx ended with its error,
	// which Wait returns).
	return g.Wait()
}

// send takes the jobs in input order: a chunk not known yet is uploaded,
// and every chunk gets its index entry.
func (r *backupRun) send(ctx context.Context, jobs <-chan *backupJob, pool *bufPool) error {
	var index uint64
	for {
		var j *backupJob
		select {
		case j = <-jobs:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		if j == nil {
			return nil // the reader is done
		}
		select {
		case <-j.hashed:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
		n := int64(len(j.data))
		if _, ok := r.known[j.digest]; ok {
			r.stats.ReusedChunks++
		} else {
			if err := r.uploads.Upload(ctx, j.digest, j.data); err != nil {
				return err
			}
			r.known[j.digest] = struct{}{}
			r.stats.NewChunks++
			r.stats.BytesUploaded += n
		}
		var err error
		if r.fixed {
			err = r.stream.Fixed(ctx, index, j.digest)
		} else {
			err = r.stream.Dynamic(ctx, uint64(r.stats.BytesRead), j.digest)
		}
		if err != nil {
			return err
		}
		pool.put(j.buf)
		index++
		r.stats.Chunks++
		r.stats.BytesRead += n
		r.report(false)
	}
}

// report calls Progress if ProgressInterval has passed, or if final.
func (r *backupRun) report(final bool) {
	if r.progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(r.lastProgress) < ProgressInterval {
		return
	}
	r.lastProgress = now
	r.stats.Elapsed = now.Sub(r.start)
	r.progress(r.stats)
}

// bufPool hands out at most n buffers of capacity size, reusing returned
// ones: it bounds the pipeline's memory to n × size.
type bufPool struct {
	free chan []byte
	made chan struct{} // a token per buffer allocated
	size int
}

func newBufPool(n, size int) *bufPool {
	return &bufPool{free: make(chan []byte, n), made: make(chan struct{}, n), size: size}
}

func (p *bufPool) get(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.free:
		return b, nil
	default:
	}
	select {
	case b := <-p.free:
		return b, nil
	case p.made <- struct{}{}:
		return make([]byte, p.size), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (p *bufPool) put(b []byte) { p.free <- b[:cap(b)] }
