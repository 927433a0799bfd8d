package casync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caproto"
)

const (
	// checkBatch is how many new chunk ids of an arriving index are
	// checked for existence at once.
	checkBatch = 1024
	// requestBatch is the most ids per REQUEST frame (casync's own batch).
	requestBatch = 2048
)

// pushState is what a push session has seen, shared by the frame reader,
// the index parser and the upload acknowledger.
type pushState struct {
	mu        sync.Mutex
	algorithm chunkbridgev1.DigestAlgorithm
	requested map[id]bool // asked for and not yet stored
	unacked   int         // chunks sent to the chunk service, not yet acknowledged
	indexEOF  bool        // INDEX_EOF received
	parsed    bool        // the index parser has seen every chunk id
	finalized bool        // publication started
	stored    int         // chunks stored by this session
}

// push accepts an index and the chunks the store lacks. The index goes to
// the catalog as it arrives, but the catalog publishes it only once the
// stream is closed, after every requested chunk has been verified and
// stored; a session that ends earlier leaves no index behind.
func (s *session) push() error {
	if s.remote&caproto.PushIndex == 0 {
		// Store-only push: casync never uploads a chunk this way; its own
		// server says GOODBYE at once (casync-protocol.md §1.8).
		s.send(&caproto.Goodbye{})
		return s.untilEOF()
	}
	requestChunks := s.remote&caproto.PushIndexChunks != 0 && s.args.Store != ""
	p := &pushState{requested: map[id]bool{}}

	index, err := s.h.Catalog.PutIndex(s.ctx)
	if err == nil {
		err = index.Send(&chunkbridgev1.PutIndexRequest{Name: s.args.Index})
	}
	if err != nil {
		return fmt.Errorf("index %s: %w", s.args.Index, err)
	}
	upload, err := s.h.Chunks.UploadChunks(s.ctx)
	if err != nil {
		return err
	}
	finalDone := make(chan struct{})
	finalize := func() {
		defer close(finalDone)
		resp, err := index.CloseAndRecv()
		if err != nil {
			s.fail(err)
			return
		}
		s.log.Info("index published", "chunks", resp.GetIndex().GetChunkCount(), "new", p.stored, "size", resp.GetIndex().GetSize())
		s.send(&caproto.Goodbye{})
	}
	check := func() {
		p.mu.Lock()
		ready := p.indexEOF && p.parsed && len(p.requested) == 0 && p.unacked == 0 && !p.finalized
		if ready {
			p.finalized = true
		}
		p.mu.Unlock()
		if ready {
			go finalize()
		}
	}
	go s.acknowledge(upload, p, check)
	pr, pw := io.Pipe()
	// Whatever ends the session, the parser must not wait for more index.
	defer pw.CloseWithError(errDone)
	go s.parse(pr, p, requestChunks, check)

	for {
		m, err := s.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			p.mu.Lock()
			done := p.finalized
			p.mu.Unlock()
			if done {
				// Publication is under way: let it finish (or fail and
				// ABORT) before the session's context ends.
				<-finalDone
				return errDone
			}
			pw.CloseWithError(io.ErrUnexpectedEOF)
			return fmt.Errorf("client closed the session before the push completed; nothing was published")
		}
		if err != nil {
			pw.CloseWithError(err)
			return err
		}
		if s.ctx.Err() != nil {
			pw.CloseWithError(s.ctx.Err())
			return errDone
		}
		switch m := m.(type) {
		case *caproto.Index:
			p.mu.Lock()
			eof := p.indexEOF
			p.mu.Unlock()
			if eof {
				return abortf(syscall.EBADMSG, "INDEX after INDEX_EOF")
			}
			// Both consumers are done with the bytes when these return.
			if err := index.Send(&chunkbridgev1.PutIndexRequest{Data: m.Data}); err != nil {
				return fmt.Errorf("index %s: %w", s.args.Index, err)
			}
			if _, err := pw.Write(m.Data); err != nil {
				return err
			}
		case *caproto.IndexEOF:
			p.mu.Lock()
			p.indexEOF = true
			p.mu.Unlock()
			pw.Close()
			check()
		case *caproto.Chunk:
			p.mu.Lock()
			alg := p.algorithm
			p.unacked++
			p.mu.Unlock()
			if alg == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED {
				return abortf(syscall.EBADMSG, "CHUNK %x before the index header", m.ID)
			}
			req := &chunkbridgev1.UploadChunksRequest{
				Id: hex.EncodeToString(m.ID[:]), Algorithm: alg, Encoding: encodingOf(m), Data: m.Data,
			}
			if err := upload.Send(req); err != nil {
				return fmt.Errorf("upload chunk %x: %w", m.ID, err)
			}
			s.h.Metrics.chunk("received", len(m.Data))
		case *caproto.Missing:
			return abortf(syscall.ENOENT, "the client lacks chunk %x that its own index references", m.ID)
		case *caproto.Goodbye:
			return errDone
		case *caproto.Abort:
			s.log.Info("client aborted", "errno", m.Errno, "reason", m.Reason)
			pw.CloseWithError(io.ErrUnexpectedEOF)
			return errDone
		default:
			return abortf(syscall.EBADMSG, "unexpected %s in a push session", m.Type())
		}
	}
}

// untilEOF reads until the client closes.
func (s *session) untilEOF() error {
	for {
		m, err := s.r.ReadMessage()
		if errors.Is(err, io.EOF) {
			return errDone
		}
		if err != nil {
			return err
		}
		if _, ok := m.(*caproto.Goodbye); ok {
			return errDone
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
// is no longer outstanding; a refused one ends the session.
func (s *session) acknowledge(upload chunkbridgev1.ChunkService_UploadChunksClient, p *pushState, check func()) {
	for {
		ack, err := upload.Recv()
		if err != nil {
			if s.ctx.Err() == nil && !errors.Is(err, io.EOF) {
				s.fail(err)
			}
			return
		}
		switch code := codes.Code(ack.GetCode()); code {
		case codes.OK:
		case codes.DataLoss:
			s.fail(abortf(syscall.EBADMSG, "%s", ack.GetMessage()))
			return
		default:
			s.fail(status.Error(code, ack.GetMessage()))
			return
		}
		var c id
		hex.Decode(c[:], []byte(ack.GetId()))
		p.mu.Lock()
		delete(p.requested, c)
		p.unacked--
		if ack.GetCreated() {
			p.stored++
		}
		p.mu.Unlock()
		check()
	}
}

// parse reads the index as it arrives, learns its digest algorithm, and
// REQUESTs (low priority, in batches) every chunk the store lacks.
func (s *session) parse(r *io.PipeReader, p *pushState, request bool, check func()) {
	seen := map[id]struct{}{}
	var batch []id
	flush := func() error {
		if len(batch) == 0 || !request {
			batch = batch[:0]
			return nil
		}
		req := &chunkbridgev1.FindMissingChunksRequest{Ids: make([]string, len(batch))}
		for i, c := range batch {
			req.Ids[i] = hex.EncodeToString(c[:])
		}
		batch = batch[:0]
		resp, err := s.h.Chunks.FindMissingChunks(s.ctx, req)
		if err != nil {
			return err
		}
		missing := make([]id, len(resp.GetMissing()))
		p.mu.Lock()
		for i, h := range resp.GetMissing() {
			hex.Decode(missing[i][:], []byte(h))
			p.requested[missing[i]] = true
		}
		p.mu.Unlock()
		for len(missing) > 0 {
			n := min(len(missing), requestBatch)
			if !s.send(&caproto.Request{IDs: missing[:n]}) {
				return s.ctx.Err()
			}
			missing = missing[n:]
		}
		return nil
	}
	err := scanIndexIDs(r, func(alg chunkbridgev1.DigestAlgorithm) {
		p.mu.Lock()
		p.algorithm = alg
		p.mu.Unlock()
	}, func(c id) error {
		if _, ok := seen[c]; ok {
			return nil
		}
		seen[c] = struct{}{}
		batch = append(batch, c)
		if len(batch) == checkBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		r.CloseWithError(err)
		if s.ctx.Err() == nil {
			if status.Code(err) == codes.Unknown {
				err = abortf(syscall.EBADMSG, "index %s: %v", s.args.Index, err)
			}
			s.fail(err)
		}
		return
	}
	p.mu.Lock()
	p.parsed = true
	p.mu.Unlock()
	check()
}
