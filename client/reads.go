package client

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/internal/grpcfast"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// readStreamAge is how long one ReadChunks stream takes new reads. A
// stream lives on its connection, and the chunk service ends its
// connections after a while so that gateways spread over its replicas: a
// stream that took reads for ever would pin the connection.
const readStreamAge = time.Minute

// A stream carries up to readStreamReads reads at once (the service reads
// --stream-window of them at a time, 8 by default) before the next read
// opens another, up to maxReadStreams; beyond that reads share the least
// busy. On a slow store (S3) a gateway still has as many reads in progress
// as it has GETs, as with a stream per chunk.
const (
	readStreamReads = 8
	maxReadStreams  = 16
)

// muxReads carries OpenStored's one-chunk reads over the chunk service's
// ReadChunks: long-lived streams, each read a tagged request and its
// response, instead of a DownloadChunks stream per chunk. A stream is
// opened as the gateway itself; each read names the principal it is made
// for (from its ctx, as the metadata of a call would), and its deadline.
type muxReads struct {
	c   chunkbridgev1.ChunkServiceClient
	tag atomic.Uint64
	// unsupported: the service predates ReadChunks; reads are downloads.
	unsupported atomic.Bool

	mu      sync.Mutex
	streams []*readStream // those that take new reads
}

// readStream is one ReadChunks stream and the reads waiting on it.
type readStream struct {
	s      grpc.BidiStreamingClient[chunkbridgev1.ReadChunksRequest, chunkbridgev1.ReadChunksResponse]
	cancel context.CancelFunc
	opened time.Time

	sendMu     sync.Mutex
	sendClosed bool

	mu      sync.Mutex
	waiting map[uint64]chan readResult
	err     error // why the stream is over; no reads wait then
}

type readResult struct {
	resp *grpcfast.Received
	err  error
}

var errReadsUnsupported = errors.New("the chunk service has no ReadChunks")

// maxReadAttempts is how many streams one read tries.
const maxReadAttempts = 3

// read returns the stored bytes of id and what frees them (their buffer
// goes back to the pool: nothing may touch them after); the error may be a
// status or a typed error, or errReadsUnsupported.
func (m *muxReads) read(ctx context.Context, id ID) ([]byte, func(), error) {
	req := &chunkbridgev1.ReadChunksRequest{Tag: m.tag.Add(1), Id: id.String()}
	if p, ok := auth.Authenticated(ctx); ok {
		req.Principal = auth.ForwardValue(p)
	}
	if d, ok := ctx.Deadline(); ok {
		req.TimeoutMs = max(1, time.Until(d).Milliseconds())
	}
	// A stream found over, or retired between taking it and sending on
	// it, is left for the next one; a stream refused as it opens (a bad
	// credential) fails the read instead of opening another at once.
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		rs, err := m.stream()
		if err != nil {
			return nil, nil, err
		}
		ch, ok := rs.register(req.Tag)
		if !ok {
			m.retire(rs)
			if attempt >= maxReadAttempts {
				return nil, nil, rs.failure()
			}
			continue
		}
		sent, err := rs.send(req)
		if !sent {
			rs.drop(req.Tag)
			if attempt >= maxReadAttempts {
				return nil, nil, errors.New("read chunk: every read stream was retired while the read was being sent")
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			rs.fail(err)
		} // on io.EOF the stream is over and its receiver reports why
		select {
		case r := <-ch:
			if r.err != nil {
				return nil, nil, r.err
			}
			if c := r.resp.Resp.GetCode(); c != int32(codes.OK) {
				r.resp.Free()
				return nil, nil, apierr.FromCode(c, r.resp.Resp.GetMessage())
			}
			return r.resp.Resp.GetData(), r.resp.Free, nil
		case <-ctx.Done():
			rs.drop(req.Tag) // its response, if it comes, is dropped (and freed, or collected)
			return nil, nil, ctx.Err()
		}
	}
}

// stream is the least busy stream that takes new reads; another is opened
// when each has readStreamReads reads waiting and there are fewer than
// maxReadStreams. Streams that are over or older than readStreamAge are
// retired first.
func (m *muxReads) stream() (*readStream, error) {
	if m.unsupported.Load() {
		return nil, errReadsUnsupported
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var best *readStream
	bestN := 0
	live := m.streams[:0]
	for _, rs := range m.streams {
		n, over := rs.load()
		if over || time.Since(rs.opened) >= readStreamAge {
			go rs.closeSend()
			continue
		}
		live = append(live, rs)
		if best == nil || n < bestN {
			best, bestN = rs, n
		}
	}
	clear(m.streams[len(live):])
	m.streams = live
	if best != nil && (bestN < readStreamReads || len(m.streams) >= maxReadStreams) {
		return best, nil
	}
	// The stream outlives the read that opens it, so it has its own
	// context, which carries no caller: it is the gateway's own.
	ctx, cancel := context.WithCancel(context.Background())
	s, err := m.c.ReadChunks(ctx)
	if err != nil {
		cancel()
		return nil, m.check(err)
	}
	rs := &readStream{s: s, cancel: cancel, opened: time.Now(), waiting: make(map[uint64]chan readResult)}
	go rs.receive(m)
	m.streams = append(m.streams, rs)
	return rs, nil
}

// retire takes rs from new reads if it still takes them.
func (m *muxReads) retire(rs *readStream) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, s := range m.streams {
		if s == rs {
			m.streams = append(m.streams[:i], m.streams[i+1:]...)
			go rs.closeSend()
			return
		}
	}
}

// check notes a service without ReadChunks.
func (m *muxReads) check(err error) error {
	if status.Code(err) == codes.Unimplemented {
		m.unsupported.Store(true)
		return errReadsUnsupported
	}
	return err
}

func (rs *readStream) register(tag uint64) (chan readResult, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.err != nil {
		return nil, false
	}
	ch := make(chan readResult, 1)
	rs.waiting[tag] = ch
	return ch, true
}

func (rs *readStream) drop(tag uint64) {
	rs.mu.Lock()
	delete(rs.waiting, tag)
	rs.mu.Unlock()
}

// failure is why rs is over.
func (rs *readStream) failure() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.err == nil {
		return errors.New("read chunk: the read stream was retired")
	}
	return rs.err
}

// load is how many reads wait on rs, and whether it is over.
func (rs *readStream) load() (int, bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.waiting), rs.err != nil
}

// send sends req unless the stream no longer takes reads (false).
func (rs *readStream) send(req *chunkbridgev1.ReadChunksRequest) (bool, error) {
	rs.sendMu.Lock()
	defer rs.sendMu.Unlock()
	if rs.sendClosed {
		return false, nil
	}
	return true, rs.s.Send(req)
}

// closeSend ends the stream's requests: the service answers the reads it
// has and ends the stream, and the receiver with it.
func (rs *readStream) closeSend() {
	rs.sendMu.Lock()
	defer rs.sendMu.Unlock()
	if !rs.sendClosed {
		rs.sendClosed = true
		rs.s.CloseSend()
	}
}

// receive hands each response to its read until the stream ends.
func (rs *readStream) receive(m *muxReads) {
	for {
		// Into a pooled buffer where the codec can, freed by the reader
		// once its caller is done with the bytes (StoredBytes.Close).
		resp := new(grpcfast.Received)
		var err error
		if grpcfast.Installed() {
			err = rs.s.RecvMsg(resp)
		} else {
			resp.Resp, err = rs.s.Recv()
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the chunk service ended the read stream")
			}
			rs.fail(m.check(err))
			return
		}
		tag := resp.Resp.GetTag()
		rs.mu.Lock()
		ch, ok := rs.waiting[tag]
		delete(rs.waiting, tag)
		rs.mu.Unlock()
		if ok {
			ch <- readResult{resp: resp}
		} else {
			resp.Free()
		}
	}
}

// fail ends the stream: every read waiting on it gets err.
func (rs *readStream) fail(err error) {
	rs.mu.Lock()
	if rs.err == nil {
		rs.err = err
	}
	waiting := rs.waiting
	rs.waiting = nil
	rs.mu.Unlock()
	for _, ch := range waiting {
		ch <- readResult{err: err}
	}
	rs.cancel()
}
