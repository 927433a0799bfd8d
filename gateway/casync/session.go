// Package casync is the casync gateway: it serves casync's remote protocol
// (caprotocol, over stdio for ssh or over TCP after a preamble) and its HTTP
// chunk-store layout, and translates both into gRPC calls to the chunk
// service and the catalog. It holds no data of its own.
package casync

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/caproto"
)

// Handler serves caprotocol sessions.
type Handler struct {
	Chunks  chunkbridgev1.ChunkServiceClient
	Catalog chunkbridgev1.CatalogServiceClient
	Log     *slog.Logger
	// DrainTimeout bounds how long input is read and discarded after an
	// ABORT, so the client reads the ABORT instead of failing with EPIPE
	// (default 10s).
	DrainTimeout time.Duration
	// BatchSize is how many requested chunks one DownloadChunks call
	// fetches (default 256).
	BatchSize int
	// Metrics may be nil.
	Metrics *Metrics
}

// Conn is one caprotocol byte stream: a TCP connection, or stdin and stdout.
type Conn interface {
	io.Reader
	io.Writer
	// CloseWrite half-closes: the peer sees end of stream.
	CloseWrite() error
	// Close ends both directions and unblocks a pending Read.
	Close() error
}

// sessionError is a fatal session error with the errno the client sees.
type sessionError struct {
	errno uint32
	msg   string
}

func (e *sessionError) Error() string { return e.msg }

func abortf(errno syscall.Errno, format string, args ...any) error {
	return &sessionError{errno: uint32(errno), msg: fmt.Sprintf(format, args...)}
}

// errnoFor picks the errno a casync client should report for err.
func errnoFor(err error) uint32 {
	var se *sessionError
	if errors.As(err, &se) {
		return se.errno
	}
	if e := caproto.Errno(err); e != 0 {
		return e
	}
	switch status.Code(err) {
	case codes.NotFound:
		return uint32(syscall.ENOENT)
	case codes.InvalidArgument, codes.DataLoss, codes.FailedPrecondition:
		return uint32(syscall.EBADMSG)
	case codes.Unavailable, codes.DeadlineExceeded:
		return uint32(syscall.EIO)
	case codes.Unauthenticated, codes.PermissionDenied:
		return uint32(syscall.EACCES)
	}
	return uint32(syscall.EIO)
}

// reason turns an error into ABORT text: a gRPC status contributes its
// message, not its code prefix.
func reason(err error) string {
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK {
		return "chunkbridge: " + s.Message()
	}
	return "chunkbridge: " + err.Error()
}

// session is one caprotocol conversation.
type session struct {
	h      *Handler
	args   Args
	log    *slog.Logger
	conn   Conn
	r      *caproto.Reader
	local  caproto.Features
	remote caproto.Features

	// ctx ends with the session; the writer then writes what is queued,
	// and the ABORT in final if there is one, and half-closes.
	ctx    context.Context
	cancel context.CancelFunc
	out    chan []byte   // encoded frames for the writer; never closed
	final  chan []byte   // the ABORT frame, at most one
	wdone  chan struct{} // closed when the writer has stopped

	mu     sync.Mutex
	failed error // the first fatal error; set once
}

// Serve runs one session on conn with the remote argv args, and returns
// when it is over. It closes conn.
func (h *Handler) Serve(ctx context.Context, conn Conn, args Args) error {
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &session{
		h: h, args: args, conn: conn,
		log:   log.With("verb", verb(args), "index", args.Index, "store", args.Store),
		r:     caproto.NewReader(conn, 0),
		out:   make(chan []byte, 16),
		final: make(chan []byte, 1),
		wdone: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	defer conn.Close()
	go s.writer()

	err := s.run()
	if err != nil && !errors.Is(err, errDone) {
		s.fail(err)
	}
	s.cancel()
	// The writer flushes what is queued; a client that stopped reading must
	// not hold the session forever.
	stuck := time.AfterFunc(h.drainTimeout(), func() { conn.Close() })
	<-s.wdone
	stuck.Stop()
	s.mu.Lock()
	failed := s.failed
	s.mu.Unlock()
	h.Metrics.session(verb(args), failed)
	if failed != nil {
		// Read until the client, having read the ABORT, closes; a client
		// still writing would otherwise fail with EPIPE first.
		t := time.AfterFunc(h.drainTimeout(), func() { conn.Close() })
		io.Copy(io.Discard, conn)
		t.Stop()
		return failed
	}
	return nil
}

func verb(a Args) string {
	if a.Push {
		return "push"
	}
	return "pull"
}

// errDone ends run without an error.
var errDone = errors.New("session done")

func (s *session) run() error {
	switch {
	case s.args.Archive != "":
		return abortf(syscall.EOPNOTSUPP, "archives (.catar) are not supported by chunkbridge; use an archive index (.caidx) instead")
	case s.args.Push:
		if s.args.Index != "" {
			s.local |= caproto.WritableIndex
		}
		if s.args.Store != "" {
			s.local |= caproto.WritableStore
		}
	default:
		if s.args.Index != "" {
			s.local |= caproto.ReadableIndex
		}
		if s.args.Store != "" {
			s.local |= caproto.ReadableStore
		}
	}
	if s.local == 0 {
		return abortf(syscall.EINVAL, "the remote arguments name no index and no store")
	}
	if s.args.Index != "" {
		check := caindex.CleanName
		if s.args.Push {
			check = caindex.CleanWritableName
		}
		if _, err := check(s.args.Index); err != nil {
			return abortf(syscall.EINVAL, "%v", err)
		}
	}
	s.send(&caproto.Hello{Features: s.local})
	m, err := s.r.ReadMessage()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return errDone
		}
		return err
	}
	hello, ok := m.(*caproto.Hello)
	if !ok {
		return abortf(syscall.EBADMSG, "expected HELLO, got %s", m.Type())
	}
	s.remote = hello.Features
	if err := caproto.CheckHandshake(s.local, s.remote); err != nil {
		return err
	}
	s.log.Debug("session started", "local", s.local, "remote", s.remote)
	if s.args.Push {
		return s.push()
	}
	return s.pull()
}

// send queues a frame for the writer; it reports false once the session
// has ended.
func (s *session) send(m caproto.Message) bool {
	frame := m.Encode(nil)
	select {
	case s.out <- frame:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// writer writes queued frames, flushing whenever the queue runs dry. When
// the session ends it writes what is still queued, then the ABORT if any,
// and half-closes the connection.
func (s *session) writer() {
	defer close(s.wdone)
	w := bufio.NewWriterSize(s.conn, 256<<10)
	var err error
	write := func(frame []byte) {
		if err == nil {
			_, err = w.Write(frame)
		}
		if err != nil {
			s.cancel() // the peer is gone: stop producing
		}
	}
	for {
		select {
		case frame := <-s.out:
			write(frame)
			if err == nil && len(s.out) == 0 {
				err = w.Flush()
			}
		case <-s.ctx.Done():
			for {
				select {
				case frame := <-s.out:
					write(frame)
					continue
				default:
				}
				break
			}
			select {
			case frame := <-s.final:
				write(frame)
			default:
			}
			if err == nil {
				w.Flush()
			}
			s.conn.CloseWrite()
			return
		}
	}
}

// fail records the first fatal error, queues an ABORT for it and ends the
// session's work. A client that never closes is cut off after
// DrainTimeout.
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.failed != nil {
		s.mu.Unlock()
		return
	}
	s.failed = err
	s.mu.Unlock()
	s.log.Warn("session aborted", "err", err)
	s.final <- caproto.NewAbort(errnoFor(err), reason(err)).Encode(nil)
	s.cancel()
	time.AfterFunc(s.h.drainTimeout()+time.Second, func() { s.conn.Close() })
}

// refuse answers a connection whose remote argv is unusable: HELLO-less
// ABORT, then drain, so the client prints the reason.
func (h *Handler) refuse(conn Conn, err error) {
	defer conn.Close()
	if h.Log != nil {
		h.Log.Warn("casync session refused", "err", err)
	}
	conn.Write(caproto.NewAbort(uint32(syscall.EINVAL), "chunkbridge: "+err.Error()).Encode(nil))
	conn.CloseWrite()
	t := time.AfterFunc(h.drainTimeout(), func() { conn.Close() })
	io.Copy(io.Discard, conn)
	t.Stop()
}

// drainTimeout and batchSize read the settings without writing the shared
// Handler: sessions run concurrently.
func (h *Handler) drainTimeout() time.Duration {
	if h.DrainTimeout > 0 {
		return h.DrainTimeout
	}
	return 10 * time.Second
}

func (h *Handler) batchSize() int {
	if h.BatchSize > 0 {
		return h.BatchSize
	}
	return 256
}
