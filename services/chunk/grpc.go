package chunk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/internal/budget"
	"github.com/chunkbridge/chunkbridge/internal/grpcfast"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Server adapts Service to gRPC.
type Server struct {
	chunkbridgev1.UnimplementedChunkServiceServer
	svc *Service
	// window is how many chunks of one stream are in flight at once: uploads
	// being verified and stored, or downloads read ahead.
	window int
	// budget bounds the chunk bytes every stream holds: received and not
	// yet stored, or read and not yet sent. A client that stops reading
	// would otherwise pin window chunks per stream, on as many streams as
	// it opens.
	budget *budget.Budget
	stall  time.Duration
	// senders are the streams' sending goroutines, which may outlive
	// their handler by a blocked send (see watch.wait).
	senders sync.WaitGroup
	// onStall, if set, learns of each stream the watch ends (tests).
	onStall func(stream string)
}

// ServerConfig tunes a Server. Zero values take the defaults.
type ServerConfig struct {
	// Window bounds the chunks in flight per stream (default 8).
	Window int
	// StreamMemory bounds the chunk bytes all streams hold at once
	// (default 256 MiB).
	StreamMemory int64
	// StallTimeout: a download or read stream whose send has waited this
	// long for its client while another stream waits for StreamMemory is
	// ended with ResourceExhausted (default 5s).
	StallTimeout time.Duration
}

// NewServer returns the gRPC ChunkService over svc.
func NewServer(svc *Service, cfg ServerConfig) *Server {
	if cfg.Window <= 0 {
		cfg.Window = 8
	}
	if cfg.StreamMemory <= 0 {
		cfg.StreamMemory = 256 << 20
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 5 * time.Second
	}
	return &Server{svc: svc, window: cfg.Window, budget: budget.New(cfg.StreamMemory), stall: cfg.StallTimeout}
}

func parseIDs(ids []string) ([]ID, error) {
	if len(ids) > MaxIDsPerCall {
		return nil, apierr.Status(fmt.Errorf("%w: %d ids in one call, at most %d", apierr.ErrInvalid, len(ids), MaxIDsPerCall))
	}
	out := make([]ID, len(ids))
	for i, s := range ids {
		id, err := ParseID(s)
		if err != nil {
			return nil, apierr.Status(fmt.Errorf("ids[%d]: %w", i, err))
		}
		out[i] = id
	}
	return out, nil
}

// FindMissingChunks implements the batched existence check.
func (s *Server) FindMissingChunks(ctx context.Context, req *chunkbridgev1.FindMissingChunksRequest) (*chunkbridgev1.FindMissingChunksResponse, error) {
	ids, err := parseIDs(req.GetIds())
	if err != nil {
		return nil, err
	}
	if req.GetEncrypted() {
		ctx = Encrypted(ctx)
	}
	missing, err := s.svc.FindMissing(ctx, ids)
	if err != nil {
		return nil, apierr.Status(err)
	}
	resp := &chunkbridgev1.FindMissingChunksResponse{Missing: make([]string, len(missing))}
	for i, id := range missing {
		resp.Missing[i] = id.String()
	}
	return resp, nil
}

// StatChunk implements stat.
func (s *Server) StatChunk(ctx context.Context, req *chunkbridgev1.StatChunkRequest) (*chunkbridgev1.StatChunkResponse, error) {
	id, err := ParseID(req.GetId())
	if err != nil {
		return nil, apierr.Status(err)
	}
	if req.GetEncrypted() {
		ctx = Encrypted(ctx)
	}
	info, err := s.svc.Stat(ctx, id)
	if err != nil {
		return nil, apierr.Status(err)
	}
	return &chunkbridgev1.StatChunkResponse{Chunk: info}, nil
}

// UploadChunks verifies and stores chunks as they arrive, up to window at a
// time, and acknowledges each in request order. Receiving stops while the
// window is full or the stream budget has no room for the chunk just
// received (held until it is stored), so a fast client is held back by
// flow control rather than by the server's memory.
func (s *Server) UploadChunks(stream grpc.BidiStreamingServer[chunkbridgev1.UploadChunksRequest, chunkbridgev1.UploadChunksResponse]) error {
	ctx := stream.Context()
	// Refused as a whole, before any data is read: a read-only client
	// learns it at once, not once per chunk.
	if err := auth.Check(ctx, auth.Append, "chunks"); err != nil {
		return apierr.Status(err)
	}
	pending := make(chan chan *chunkbridgev1.UploadChunksResponse, s.window-1)
	sent := make(chan error, 1)
	go func() { sent <- sendInOrder(pending, stream.Send, nil) }()
	// An acknowledgement holds no chunk: uploads charge the budget until
	// stored, and their stream is no holder for the watch to end.
	var held atomic.Int64

	var recvErr error
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			recvErr = err
			break
		}
		result := make(chan *chunkbridgev1.UploadChunksResponse, 1)
		select {
		case pending <- result:
		case <-ctx.Done():
			recvErr = ctx.Err()
		}
		c := &charge{b: s.budget, held: &held}
		if recvErr == nil {
			recvErr = c.reserve(ctx, int64(len(req.GetData())))
		}
		if recvErr != nil {
			// Pending or not, nobody else fills it.
			result <- &chunkbridgev1.UploadChunksResponse{Id: req.GetId(), Code: int32(apierr.Code(recvErr)), Message: recvErr.Error()}
			break
		}
		go func() {
			defer c.release()
			result <- s.upload(ctx, req)
		}()
	}
	close(pending)
	if err := <-sent; err != nil {
		return err
	}
	return recvErr
}

func (s *Server) upload(ctx context.Context, req *chunkbridgev1.UploadChunksRequest) *chunkbridgev1.UploadChunksResponse {
	resp := &chunkbridgev1.UploadChunksResponse{Id: req.GetId()}
	id, err := ParseID(req.GetId())
	if err == nil {
		if req.GetEncrypted() {
			ctx = Encrypted(ctx)
		}
		resp.Created, err = s.svc.Put(ctx, Upload{ID: id, Algorithm: req.GetAlgorithm(), Encoding: req.GetEncoding(), Data: req.GetData(), Size: req.GetSize()})
	}
	if err != nil {
		resp.Code, resp.Message = int32(apierr.Code(err)), err.Error()
	}
	return resp
}

// DownloadChunks reads up to window chunks ahead of the one being sent, so
// a slow object store is paid once per window, not once per chunk, and
// sends them in request order. Each read holds its share of the stream
// budget until its response is sent (see watch).
func (s *Server) DownloadChunks(req *chunkbridgev1.DownloadChunksRequest, stream grpc.ServerStreamingServer[chunkbridgev1.DownloadChunksResponse]) error {
	ids, err := parseIDs(req.GetIds())
	if err != nil {
		return err
	}
	sctx := stream.Context()
	if req.GetEncrypted() {
		sctx = Encrypted(sctx)
	}
	var raw bool
	switch req.GetEncoding() {
	case chunkbridgev1.Encoding_ENCODING_UNSPECIFIED, chunkbridgev1.Encoding_ENCODING_ZSTD:
	case chunkbridgev1.Encoding_ENCODING_RAW:
		raw = true
	default:
		return apierr.Status(fmt.Errorf("%w: download encoding %s: want ZSTD (as stored) or RAW", apierr.ErrInvalid, req.GetEncoding()))
	}
	w := s.watch(sctx, "DownloadChunks")
	defer w.done()
	ctx, cancel := context.WithCancel(sctx)
	defer cancel()
	type result struct {
		resp   *chunkbridgev1.DownloadChunksResponse
		charge *charge
	}
	pending := make(chan chan *result, s.window-1)
	go func() {
		defer close(pending)
		for _, id := range ids {
			r := make(chan *result, 1)
			select {
			case pending <- r:
			case <-ctx.Done():
				return
			}
			// Shares are taken in request order, as large as a chunk can
			// be until it is opened: the chunk to be sent next always has
			// its share, so streams cannot all wait for each other's.
			c := w.charge()
			if err := c.reserve(ctx, maxStored); err != nil {
				r <- &result{resp: failed(id, err)}
				return
			}
			go func() { r <- &result{s.download(ctx, id, raw, c), c} }()
		}
	}()
	sent := make(chan error, 1)
	s.senders.Go(func() {
		sent <- sendInOrder(pending, func(r *result) error {
			return w.sendOne(func() error { return stream.Send(r.resp) })
		}, func(r *result) { r.charge.release() })
	})
	if _, err := w.wait(sent); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return apierr.Status(err)
	}
	return nil
}

func (s *Server) download(ctx context.Context, id ID, raw bool, c *charge) *chunkbridgev1.DownloadChunksResponse {
	ch, err := s.svc.get(ctx, id, raw, c)
	if err != nil {
		return failed(id, err)
	}
	return &chunkbridgev1.DownloadChunksResponse{
		Id: id.String(), Code: int32(codes.OK), Encoding: ch.Encoding, Data: ch.Data, Algorithm: ch.Algorithm, Size: ch.Size,
	}
}

func failed(id ID, err error) *chunkbridgev1.DownloadChunksResponse {
	return &chunkbridgev1.DownloadChunksResponse{Id: id.String(), Code: int32(apierr.Code(err)), Message: err.Error()}
}

// ReadChunks serves tagged one-chunk reads on one stream, the stored bytes
// of each, in the order the reads finish. At most window reads are in
// progress or unsent: beyond that the next request is not read until a
// response has been sent, and gRPC's flow control holds the client back.
// Each read holds its share of the stream budget until its response is
// sent (see watch).
func (s *Server) ReadChunks(stream grpc.BidiStreamingServer[chunkbridgev1.ReadChunksRequest, chunkbridgev1.ReadChunksResponse]) error {
	sctx := stream.Context()
	// The stream's caller, as the listener authenticated it (none when
	// authentication is off, where forwarded principals are ignored as
	// the interceptor ignores the metadata).
	caller, authed := auth.Authenticated(sctx)
	w := s.watch(sctx, "ReadChunks")
	defer w.done()
	ctx, cancel := context.WithCancel(sctx)
	defer cancel()
	type result struct {
		resp   *grpcfast.Lent
		charge *charge
	}
	slots := make(chan struct{}, s.window)
	out := make(chan result, s.window)
	sent := make(chan error, 1)
	s.senders.Go(func() {
		var err error
		for r := range out {
			if err == nil {
				if err = w.sendOne(func() error { return r.resp.Send(stream) }); err != nil {
					cancel()
				}
			}
			r.charge.release()
			<-slots
		}
		sent <- err
	})
	received := make(chan error, 1)
	go func() {
		var wg sync.WaitGroup
		var err error
		for {
			var req *chunkbridgev1.ReadChunksRequest
			if req, err = stream.Recv(); err != nil {
				break
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
			}
			if err = ctx.Err(); err != nil {
				break
			}
			wg.Go(func() {
				c := w.charge()
				out <- result{s.read(ctx, caller, authed, req, c), c}
			})
		}
		wg.Wait()
		close(out)
		received <- err
	}()
	stalled, err := w.wait(received)
	if stalled {
		return err
	}
	stalled, serr := w.wait(sent)
	switch {
	case stalled:
		return serr
	case errors.Is(err, io.EOF):
		return serr
	case serr != nil:
		return serr
	}
	return apierr.Status(err)
}

// read answers one read; the chunk is read into a pooled buffer that gRPC
// gives back once it has written it (grpcfast.Lent).
func (s *Server) read(ctx context.Context, caller auth.Principal, authed bool, req *chunkbridgev1.ReadChunksRequest, c *charge) *grpcfast.Lent {
	buf, err := s.readOne(ctx, caller, authed, req, c)
	if err != nil {
		return &grpcfast.Lent{Resp: &chunkbridgev1.ReadChunksResponse{Tag: req.GetTag(), Code: int32(apierr.Code(err)), Message: err.Error()}}
	}
	return &grpcfast.Lent{Resp: &chunkbridgev1.ReadChunksResponse{Tag: req.GetTag(), Data: *buf}, Buf: buf}
}

func (s *Server) readOne(ctx context.Context, caller auth.Principal, authed bool, req *chunkbridgev1.ReadChunksRequest, c *charge) (*[]byte, error) {
	id, err := ParseID(req.GetId())
	if err != nil {
		return nil, err
	}
	if v := req.GetPrincipal(); v != "" && authed {
		// The rule of the chunkbridge-principal metadata, per read.
		if !caller.Allows(auth.Admin) {
			return nil, fmt.Errorf("%w: %s may not act for another principal: that needs the admin role", apierr.ErrPermission, caller.Name)
		}
		p, err := auth.ParseForwarded(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", apierr.ErrInvalid, err)
		}
		ctx = auth.NewContext(ctx, p)
	}
	// One too long for a Duration (292 years) would wrap into the past:
	// no deadline then, as for 0.
	if ms := req.GetTimeoutMs(); ms > 0 && ms <= math.MaxInt64/int64(time.Millisecond) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	return s.svc.readStored(ctx, id, c, grpcfast.Pool)
}

// sendInOrder sends each result as it completes, in queue order, and then
// passes it to done (if not nil). After a send fails it keeps draining so
// that no producer blocks, and returns the error.
func sendInOrder[T any](pending <-chan chan *T, send func(*T) error, done func(*T)) error {
	var err error
	for result := range pending {
		r := <-result
		if err == nil {
			err = send(r)
		}
		if done != nil {
			done(r)
		}
	}
	return err
}
