// Package casync is the casync gateway: it serves casync's remote protocol
// (caprotocol, over stdio for ssh or over TCP after a preamble) and its HTTP
// chunk-store layout, and translates both into calls of the chunk service,
// through the typed client (package client, either transport), and of the
// catalog. It holds no data of its own.
package casync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Handler serves caprotocol sessions. Every limit is per session; zero
// fields take the defaults.
type Handler struct {
	// Chunks is the chunk service: client.NewGRPC, or client.NewLocal in
	// the process that runs it.
	Chunks *client.Chunks
	// Catalog is the catalog service (client.NewCatalogGRPC); its errors
	// are typed as the chunk client's, so the one errno table serves both.
	Catalog *client.Catalog
	Log     *slog.Logger
	// DrainTimeout bounds how long input is read and discarded after an
	// ABORT, so the client reads the ABORT instead of failing with EPIPE
	// (default 10s).
	DrainTimeout time.Duration
	// IdleTimeout ends a session with no bytes in either direction for
	// this long, in every state, before and after HELLO (default 10m).
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to the client: a client that stops
	// reading is cut off after it (default 1m).
	WriteTimeout time.Duration
	// QueueBytes bounds the frames queued for the writer (default 4 MiB).
	QueueBytes int64
	// ReadAheadBytes bounds the chunk bytes a pull has asked the chunk
	// service for and not yet queued for the writer (default 8 MiB).
	ReadAheadBytes int64
	// PushBytes bounds the chunk bytes a push has sent to the chunk
	// service and not yet seen acknowledged (default 16 MiB): the
	// Uploader's byte window.
	PushBytes int64
	// MaxRequested bounds the distinct chunk ids one pull may REQUEST
	// (default 4 Mi: an image of 256 GiB at casync's 64 KiB average chunk;
	// the session remembers each, about 100 bytes apiece).
	MaxRequested int
	// MaxPushIDs bounds the distinct chunk ids of the index one push may
	// send (default 4 Mi, as MaxRequested); the session remembers each.
	// A larger index is refused with ABORT ENOBUFS.
	MaxPushIDs int
	// Shared, if set, is the process's budget of chunk data buffered for
	// clients, shared with every other session (of either gateway): a
	// pull holds its read-ahead in it from the moment a batch is asked for
	// until each chunk's frame is written. ReadAheadBytes stays the
	// session's share.
	Shared *session.Budget
	// StallTimeout replaces WriteTimeout for a session holding part of
	// Shared while others wait for it (default 5s; docs/session.md).
	StallTimeout time.Duration
	// BatchSize is the most chunk ids one Download fetches
	// (default 256); ReadAheadBytes usually allows fewer.
	BatchSize int
	// Metrics may be nil.
	Metrics *Metrics
	// Audit, if set, is told of each session refused for want of access:
	// a missing or wrong token (principal ""), or a role that does not
	// allow what the session asked (a read principal pushing, an append
	// one replacing an index). It is the gateway's audit line.
	Audit func(principal string, args Args, err error)
}

// Conn is one caprotocol byte stream: a TCP connection, or stdin and
// stdout. CloseWrite (the peer sees end of stream), SetReadDeadline and
// SetWriteDeadline are used where the Conn has them; without deadlines a
// timer closes the Conn instead.
type Conn = session.Conn

// sessionError is a fatal session error with the errno the client sees.
type sessionError struct {
	errno uint32
	msg   string
}

func (e *sessionError) Error() string { return e.msg }

func abortf(errno syscall.Errno, format string, args ...any) error {
	return &sessionError{errno: uint32(errno), msg: fmt.Sprintf(format, args...)}
}

// errnoFor picks the errno a casync client should report for err: the
// session's own choice, an idle timeout, a protocol error, or else the
// service's error class (apierr.Code) through errnoOfCode.
func errnoFor(err error) uint32 {
	var se *sessionError
	if errors.As(err, &se) {
		return se.errno
	}
	var idle *session.IdleError
	if errors.As(err, &idle) {
		return uint32(syscall.ETIMEDOUT)
	}
	if e := caproto.Errno(err); e != 0 {
		return e
	}
	if errors.Is(apierr.FromStatus(err), apierr.ErrQuota) {
		return uint32(syscall.EDQUOT) // not EAGAIN: retrying does not help
	}
	if e, ok := errnoOfCode[apierr.Code(err)]; ok {
		return uint32(e)
	}
	return uint32(syscall.EIO)
}

// errnoOfCode is the one table from the services' error classes (the
// codes of apierr's sentinels, whichever transport the error came over)
// to what casync prints; anything else is EIO.
var errnoOfCode = map[codes.Code]syscall.Errno{
	codes.NotFound:           syscall.ENOENT,     // apierr.ErrNotFound
	codes.InvalidArgument:    syscall.EBADMSG,    // apierr.ErrInvalid
	codes.DataLoss:           syscall.EBADMSG,    // apierr.ErrDataLoss: a chunk that does not hash to its id
	codes.FailedPrecondition: syscall.EBADMSG,    // apierr.ErrFailedPrecondition: an index with chunks not stored
	codes.AlreadyExists:      syscall.EEXIST,     // apierr.ErrExists
	codes.Aborted:            syscall.EBUSY,      // apierr.ErrBusy
	codes.ResourceExhausted:  syscall.EAGAIN,     // apierr.ErrExhausted: retry later
	codes.Unavailable:        syscall.EIO,        // apierr.ErrUnavailable
	codes.DeadlineExceeded:   syscall.EIO,        // context.DeadlineExceeded
	codes.Unauthenticated:    syscall.EACCES,     // apierr.ErrUnauthenticated
	codes.PermissionDenied:   syscall.EACCES,     // apierr.ErrPermission
	codes.Unimplemented:      syscall.EOPNOTSUPP, // a service too old for the request
	codes.Internal:           syscall.EIO,        // apierr.ErrInternal, and errors of no class
}

// reason turns an error into ABORT text. A service's error reads as the
// message the service wrote (apierr.Error), which names what failed.
func reason(err error) string {
	return "chunkbridge: " + err.Error()
}

func abortFrame(err error) []byte {
	return caproto.NewAbort(errnoFor(err), reason(err)).Encode(nil)
}

// conv is one caprotocol conversation on the shared session skeleton: the
// skeleton owns the goroutines, the bounded writer, the deadlines and the
// final ABORT; conv owns what casync means.
type conv struct {
	h      *Handler
	args   Args
	log    *slog.Logger
	s      *session.Session
	r      *caproto.Reader
	local  caproto.Features
	remote caproto.Features
	// queueBytes is the writer's queue bound.
	queueBytes int64
	// audited: one audit line a session.
	audited sync.Once
}

func (h *Handler) sessionConfig() session.Config {
	return session.Config{
		IdleTimeout:  h.IdleTimeout,
		WriteTimeout: h.WriteTimeout,
		QueueBytes:   session.OrDefault(h.QueueBytes, 4<<20),
		DrainTimeout: h.DrainTimeout,
		Shared:       h.Shared,
		StallTimeout: h.StallTimeout,
	}
}

// Serve runs one session on conn with the remote argv args, and returns
// when it is over. It closes conn.
func (h *Handler) Serve(ctx context.Context, conn Conn, args Args) error {
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := h.sessionConfig()
	c := &conv{h: h, args: args, log: log.With("verb", verb(args), "index", args.Index, "store", args.Store), queueBytes: cfg.QueueBytes}
	c.s = session.New(ctx, conn, cfg)
	c.r = caproto.NewReader(c.s.Reader(), 0)
	err := c.s.Run(func(ctx context.Context) error { return c.abortOn(ctx, c.run(ctx)) })
	h.Metrics.session(verb(args), err)
	if testHookServed != nil {
		testHookServed(verb(args), err)
	}
	if err != nil {
		c.log.Warn("session ended", "err", err)
	}
	return err
}

// refusedAccess reports whether err ended a session because its principal
// may not do what it asked.
func refusedAccess(ctx context.Context, err error) bool {
	switch apierr.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated:
		return true
	case codes.AlreadyExists:
		return !auth.FromContext(ctx).Allows(auth.Replace)
	}
	return false
}

func (h *Handler) audit(principal string, args Args, err error) {
	if h.Audit != nil {
		h.Audit(principal, args, err)
	}
}

// testHookServed, if set, runs when a session is over.
var testHookServed func(verb string, err error)

// goWork runs a worker whose error aborts the session.
func (c *conv) goWork(f func(ctx context.Context) error) {
	c.s.Go(func(ctx context.Context) error { return c.abortOn(ctx, f(ctx)) })
}

// abortOn makes err, the first failure of the session, the ABORT the
// client reads. An error after the session ended is a consequence of the
// end, not news for the client.
func (c *conv) abortOn(ctx context.Context, err error) error {
	if err != nil && ctx.Err() == nil {
		if refusedAccess(ctx, err) {
			// Before the ABORT goes out: a client that read it finds the
			// refusal logged.
			c.audited.Do(func() { c.h.audit(auth.FromContext(ctx).Name, c.args, err) })
		}
		c.s.SetFinal(abortFrame(err))
	}
	return err
}

func verb(a Args) string {
	if a.Push {
		return "push"
	}
	return "pull"
}

func (c *conv) run(ctx context.Context) error {
	switch {
	case c.args.Archive != "":
		return abortf(syscall.EOPNOTSUPP, "archives (.catar) are not supported by chunkbridge; use an archive index (.caidx) instead")
	case c.args.Push:
		if c.args.Index != "" {
			c.local |= caproto.WritableIndex
		}
		if c.args.Store != "" {
			c.local |= caproto.WritableStore
		}
	default:
		if c.args.Index != "" {
			c.local |= caproto.ReadableIndex
		}
		if c.args.Store != "" {
			c.local |= caproto.ReadableStore
		}
	}
	if c.local == 0 {
		return abortf(syscall.EINVAL, "the remote arguments name no index and no store")
	}
	if c.args.Index != "" {
		check := caindex.CleanName
		if c.args.Push {
			check = caindex.CleanWritableName
		}
		if _, err := check(c.args.Index); err != nil {
			return abortf(syscall.EINVAL, "%v", err)
		}
	}
	if c.args.Push {
		if err := c.mayPush(ctx); err != nil {
			return err
		}
	}
	if err := c.send(ctx, &caproto.Hello{Features: c.local}); err != nil {
		return err
	}
	m, err := c.r.ReadMessage()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	hello, ok := m.(*caproto.Hello)
	if !ok {
		return abortf(syscall.EBADMSG, "expected HELLO, got %s", m.Type())
	}
	c.remote = hello.Features
	if err := caproto.CheckHandshake(c.local, c.remote); err != nil {
		return err
	}
	c.log.Debug("session started", "local", c.local, "remote", c.remote)
	if c.args.Push {
		return c.push(ctx)
	}
	return c.pull(ctx)
}

// mayPush refuses, before HELLO, a push the session's principal may not
// make. The services would refuse it too, but only once the client had
// sent its index and chunks; the catalog's refusal to let an append
// principal replace an index stays the atomic one (PutIfAbsent).
func (c *conv) mayPush(ctx context.Context) error {
	what := "chunks"
	if c.args.Index != "" {
		what = "chunks and index " + c.args.Index
	}
	if err := auth.Check(ctx, auth.Append, what); err != nil {
		return err
	}
	p := auth.FromContext(ctx)
	if c.args.Index == "" || p.Allows(auth.Replace) {
		return nil
	}
	_, err := c.h.Catalog.StatIndex(ctx, c.args.Index)
	switch {
	case err == nil:
		return fmt.Errorf("index %s %w, and %s may not replace it: its role %s only adds new indexes; push under a new name, or as a principal with the write role",
			c.args.Index, apierr.ErrExists, p.Name, p.Role)
	case errors.Is(err, apierr.ErrNotFound):
		return nil
	}
	return fmt.Errorf("index %s: %w", c.args.Index, err)
}

// send queues a frame for the writer, waiting while its queue is full.
func (c *conv) send(ctx context.Context, m caproto.Message) error {
	return c.s.Send(ctx, m.Encode(nil))
}

// refuse answers a connection that gets no session (its remote argv is
// unusable, or the server is full): ABORT without HELLO, then half-close
// and drain, so the client prints the reason.
func (h *Handler) refuse(ctx context.Context, conn Conn, err error) error {
	if h.Log != nil {
		h.Log.Warn("casync session refused", "err", err)
	}
	s := session.New(ctx, conn, h.sessionConfig())
	s.Fail(err, abortFrame(err))
	return s.Run(func(context.Context) error { return nil })
}

func (h *Handler) batchSize() int { return session.OrDefault(h.BatchSize, 256) }
