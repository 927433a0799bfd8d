package casync

import (
	"encoding/hex"
	"errors"
	"io"
	"sync"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caproto"
)

// indexPiece is the INDEX payload size casync itself uses.
const indexPiece = 64 << 10

// fetchers is how many DownloadChunks calls run at once per session; each
// reads ahead on the chunk service too.
const fetchers = 2

type id = [caproto.IDSize]byte

// pull serves a client that reads: the index if it asks for it, and the
// chunks it REQUESTs, high priority first. It ends when the client closes
// or says GOODBYE (casync's client does not).
func (s *session) pull() error {
	if s.remote&caproto.PullIndex != 0 {
		go s.sendIndex()
	}
	q := newRequestQueue()
	for range fetchers {
		go s.fetch(q)
	}
	for {
		m, err := s.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			return errDone
		}
		if err != nil {
			return err
		}
		if s.ctx.Err() != nil {
			return errDone
		}
		switch m := m.(type) {
		case *caproto.Request:
			if s.remote&caproto.PullChunks == 0 {
				return abortf(syscall.EBADMSG, "REQUEST without PULL_CHUNKS in the client's HELLO")
			}
			q.add(m.IDs, m.HighPriority())
		case *caproto.Goodbye:
			return errDone
		case *caproto.Abort:
			s.log.Info("client aborted", "errno", m.Errno, "reason", m.Reason)
			return errDone
		default:
			return abortf(syscall.EBADMSG, "unexpected %s in a pull session", m.Type())
		}
	}
}

// sendIndex streams the catalog's index as INDEX frames and INDEX_EOF.
func (s *session) sendIndex() {
	stream, err := s.h.Catalog.GetIndex(s.ctx, &chunkbridgev1.GetIndexRequest{Name: s.args.Index})
	if err != nil {
		s.fail(err)
		return
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if s.ctx.Err() == nil {
				s.fail(err)
			}
			return
		}
		for data := resp.GetData(); len(data) > 0; {
			n := min(len(data), indexPiece)
			if !s.send(&caproto.Index{Data: data[:n]}) {
				return
			}
			data = data[n:]
		}
	}
	s.send(&caproto.IndexEOF{})
}

// fetch answers queued requests in batches through DownloadChunks: a
// batch of ids is one call, read ahead on the server, not one round trip
// per chunk.
func (s *session) fetch(q *requestQueue) {
	for {
		batch := q.take(s.h.batchSize())
		if len(batch) == 0 {
			select {
			case <-q.notify:
				continue
			case <-s.ctx.Done():
				return
			}
		}
		req := &chunkbridgev1.DownloadChunksRequest{Ids: make([]string, len(batch)), Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD}
		for i, c := range batch {
			req.Ids[i] = hex.EncodeToString(c[:])
		}
		stream, err := s.h.Chunks.DownloadChunks(s.ctx, req)
		if err != nil {
			if s.ctx.Err() == nil {
				s.fail(err)
			}
			return
		}
		for i := 0; ; i++ {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if s.ctx.Err() == nil {
					s.fail(err)
				}
				return
			}
			var m caproto.Message
			switch codes.Code(resp.GetCode()) {
			case codes.OK:
				if len(resp.GetData()) > caproto.MaxFrameSize-caproto.HeaderSize-8-caproto.IDSize {
					s.fail(abortf(syscall.EFBIG, "chunk %s: %d stored bytes do not fit one CHUNK frame", resp.GetId(), len(resp.GetData())))
					return
				}
				m = &caproto.Chunk{Flags: caproto.ChunkCompressed, ID: batch[i], Data: resp.GetData()}
				s.h.Metrics.chunk("sent", len(resp.GetData()))
			case codes.NotFound:
				m = &caproto.Missing{ID: batch[i]}
				s.h.Metrics.chunk("missing", 0)
			default:
				s.fail(status.Error(codes.Code(resp.GetCode()), resp.GetMessage()))
				return
			}
			if !s.send(m) {
				return
			}
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

func (q *requestQueue) add(ids []id, high bool) {
	q.mu.Lock()
	for _, c := range ids {
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
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
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
