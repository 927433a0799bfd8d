// Package session is the one session skeleton of chunkbridge's raw-protocol
// gateways (PMXBCKUP and casync): everything a framed request/response
// conversation on one byte stream needs so that no gateway hand-rolls its
// own concurrency.
//
// A Session owns:
//
//   - an errgroup with the session context: Go starts workers, Run the main
//     (reading) loop; the first error, or the main loop returning, ends the
//     session, and Run returns only when every goroutine has returned;
//   - a framed writer goroutine fed by Send through a queue bounded in
//     bytes (Config.QueueBytes): Send blocks while the queue is full and
//     fails once its context or the session ends, so a peer that does not
//     read costs at most QueueBytes plus the write buffer. Frames are
//     batched and flushed when the queue runs dry; every write has a
//     deadline (Config.WriteTimeout), so a peer that stops reading ends the
//     session;
//   - an optional final frame (SetFinal: casync's ABORT, a PMXBCKUP
//     refusal), written after everything queued; then the write side is
//     half-closed (CloseWrite) and the input drained for at most
//     Config.DrainTimeout, so the peer reads the frame instead of a reset;
//   - a Reader that arms a read deadline before every read: a session with
//     no traffic in either direction for Config.IdleTimeout ends, in every
//     protocol state (before and after a handshake alike);
//   - Budget, a weighted semaphore for per-connection limits such as bytes
//     of downloads in flight, and, shared by all sessions of a process
//     (Config.Shared), for the chunk data they buffer for their peers:
//     Hold takes bytes of it before data is fetched, SendBuffers hands
//     them to the writer, which gives them back once the frame is written
//     or dropped, and whatever a session still holds when it ends goes
//     back then. While a request waits for the shared budget, a session
//     holding some of it whose peer reads nothing is cut after
//     Config.StallTimeout instead of Config.WriteTimeout.
//
// Connections without deadlines (pipes of an ssh session) get the same
// limits by closing the connection when a timer fires.
package session

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// Conn is the session's byte stream. A net.Conn is one; CloseWrite,
// SetReadDeadline and SetWriteDeadline are used when the Conn has them.
type Conn interface {
	io.Reader
	io.Writer
	io.Closer
}

// Config holds a session's limits; zero fields take the defaults.
type Config struct {
	// IdleTimeout ends a session with no bytes in either direction for
	// this long (default 10m).
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to the peer (default 1m).
	WriteTimeout time.Duration
	// QueueBytes bounds the frames queued for the writer (default 8 MiB).
	// A frame larger than that waits for the queue to be empty.
	QueueBytes int64
	// BufferSize is the write buffer (default 256 KiB).
	BufferSize int
	// DrainTimeout bounds reading and discarding input after a final frame
	// (default 10s); at most MaxDrain bytes are read.
	DrainTimeout time.Duration
	// Shared, if set, is the process-wide budget of chunk data buffered
	// for peers, shared by all sessions: see Hold.
	Shared *Budget
	// StallTimeout replaces WriteTimeout for a session holding part of
	// Shared while another request waits for it (default 5s): under
	// memory pressure, a peer that reads nothing gives its share back
	// sooner. Like WriteTimeout it bounds a wait for any progress (every
	// 64 KiB written re-arms it), so a slow reader is not cut.
	StallTimeout time.Duration
}

const (
	defaultIdle   = 10 * time.Minute
	defaultWrite  = time.Minute
	defaultQueue  = 8 << 20
	defaultBuffer = 256 << 10
	defaultDrain  = 10 * time.Second
	MaxDrain      = 64 << 20
	pastDeadline  = 1 // unix seconds: a deadline long gone
)

// testHookSendBlocked, if set, runs when Send finds the queue full.
var testHookSendBlocked func()

// ErrEnded is the cause of a session whose main loop returned nil.
var ErrEnded = errors.New("session ended")

// Session is one conversation; see the package doc.
type Session struct {
	cfg    Config
	conn   Conn
	ctx    context.Context
	cancel context.CancelCauseFunc
	g      errgroup.Group
	queue  *Budget

	mu       sync.Mutex
	frames   []frame
	final    []byte
	draining bool // the drain owns the read deadline now
	wake     chan struct{}

	// held is what the session holds of cfg.Shared; after the end,
	// nothing more is taken.
	heldMu sync.Mutex
	held   int64
	over   bool

	writing  atomic.Bool  // the writer is in a write to the peer
	squeezed atomic.Bool  // a write got StallTimeout
	lastIO   atomic.Int64 // unix nanoseconds of the last byte read or written
	drained  atomic.Int64
	wroteFin atomic.Bool
}

// New starts a session on conn: its writer runs until the session ends.
// Call Run exactly once.
func New(ctx context.Context, conn Conn, cfg Config) *Session {
	cfg.IdleTimeout = OrDefault(cfg.IdleTimeout, defaultIdle)
	cfg.WriteTimeout = OrDefault(cfg.WriteTimeout, defaultWrite)
	cfg.QueueBytes = OrDefault(cfg.QueueBytes, defaultQueue)
	cfg.BufferSize = OrDefault(cfg.BufferSize, defaultBuffer)
	cfg.DrainTimeout = OrDefault(cfg.DrainTimeout, defaultDrain)
	cfg.StallTimeout = OrDefault(cfg.StallTimeout, defaultStall)
	s := &Session{cfg: cfg, conn: conn, queue: NewBudget(cfg.QueueBytes), wake: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancelCause(ctx)
	s.touch()
	// A reader blocked in Read must notice the end at once, not at the
	// idle deadline.
	context.AfterFunc(s.ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.draining {
			return
		}
		if d, ok := conn.(interface{ SetReadDeadline(time.Time) error }); !ok || d.SetReadDeadline(time.Unix(pastDeadline, 0)) != nil {
			conn.Close()
		}
	})
	s.g.Go(s.writer)
	return s
}

// Context is the session context: it ends with the session.
func (s *Session) Context() context.Context { return s.ctx }

// Go runs a worker in the session's group; an error from it ends the
// session with that error as the cause.
func (s *Session) Go(f func(ctx context.Context) error) {
	s.g.Go(func() error {
		err := f(s.ctx)
		if err != nil {
			s.cancel(err)
		}
		return err
	})
}

// End ends the session: err is the cause (nil: ended normally).
func (s *Session) End(err error) {
	if err == nil {
		err = ErrEnded
	}
	s.cancel(err)
}

// Run runs the main loop, which normally reads requests from Reader, and
// ends the session when it returns. Then it waits for every worker and
// the writer, drains the input if a final frame was written, and closes
// the connection. It returns the first error that ended the session, or
// nil if the main loop returned nil first.
func (s *Session) Run(main func(ctx context.Context) error) error {
	s.g.Go(func() error {
		err := main(s.ctx)
		s.End(err)
		return err
	})
	s.g.Wait()
	s.releaseHeld() // every frame is written or dropped: nothing holds it now
	if s.wroteFin.Load() {
		s.drain()
	}
	s.conn.Close()
	if err := context.Cause(s.ctx); !errors.Is(err, ErrEnded) {
		return err
	}
	return nil
}

// frame is one Send: its buffers go out contiguously, then done runs.
type frame struct {
	bufs [][]byte
	n    int64
	done func()
}

// Send queues one encoded frame for the writer, waiting while the queue is
// full. It fails once ctx or the session ends. The frame must not be
// modified afterwards.
func (s *Session) Send(ctx context.Context, frame []byte) error {
	return s.SendBuffers(ctx, nil, frame)
}

// SendBuffers queues one frame made of bufs (a header and a chunk's data,
// say, so that the data is never copied into a frame): the writer writes
// them one after the other, with no other frame in between. done, if not
// nil, runs exactly once: when the frame is written, or dropped because
// the session ended, or at once if SendBuffers fails. It is where bytes
// taken with Hold for the frame's data are given back (Unhold). The
// buffers must not be modified until done.
func (s *Session) SendBuffers(ctx context.Context, done func(), bufs ...[]byte) error {
	f := frame{bufs: bufs, done: done}
	for _, b := range bufs {
		f.n += int64(len(b))
	}
	err := s.enqueue(ctx, f)
	if err != nil && done != nil {
		done()
	}
	return err
}

func (s *Session) enqueue(ctx context.Context, f frame) error {
	n := f.n
	actx, stop := s.join(ctx)
	defer stop()
	if !s.queue.TryAcquire(n) {
		if testHookSendBlocked != nil {
			testHookSendBlocked()
		}
		if err := s.queue.Acquire(actx, n); err != nil {
			if s.ctx.Err() != nil {
				return s.endedError()
			}
			return err
		}
	}
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		s.queue.Release(n)
		return s.endedError()
	}
	s.frames = append(s.frames, f)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// join is ctx, ended also by the end of the session.
func (s *Session) join(ctx context.Context) (context.Context, func()) {
	if ctx.Done() == s.ctx.Done() {
		return ctx, func() {}
	}
	actx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	return actx, func() { stop(); cancel() }
}

// Hold takes n bytes of the shared budget (Config.Shared; without one it
// does nothing) for chunk data the session is about to fetch for its
// peer, waiting until they are free or ctx or the session ends. Give them
// back with Unhold: by hand if the data is dropped, or from SendBuffers's
// done once written. What the session still holds when it ends goes back
// then.
func (s *Session) Hold(ctx context.Context, n int64) error {
	b := s.cfg.Shared
	if b == nil || n <= 0 {
		return nil
	}
	n = b.Clamp(n)
	if !b.TryAcquire(n) {
		actx, stop := s.join(ctx)
		err := b.Acquire(actx, n)
		stop()
		if err != nil {
			if s.ctx.Err() != nil {
				return s.endedError()
			}
			return err
		}
	}
	return s.addHeld(n)
}

// HoldNow takes n bytes of the shared budget at once, even beyond it: for
// a bounded amount learnt only once the data is there (a chunk larger
// than its estimate). It fails only once the session is over.
func (s *Session) HoldNow(n int64) error {
	b := s.cfg.Shared
	if b == nil || n <= 0 {
		return nil
	}
	n = b.Clamp(n)
	b.Overdraw(n)
	return s.addHeld(n)
}

func (s *Session) addHeld(n int64) error {
	s.heldMu.Lock()
	if s.over {
		s.heldMu.Unlock()
		s.cfg.Shared.Release(n)
		return s.endedError()
	}
	if s.held == 0 {
		s.cfg.Shared.SetHolder(s, true)
	}
	s.held += n
	s.heldMu.Unlock()
	return nil
}

// Unhold gives back n bytes taken by Hold or HoldNow.
func (s *Session) Unhold(n int64) {
	b := s.cfg.Shared
	if b == nil || n <= 0 {
		return
	}
	s.heldMu.Lock()
	n = min(n, s.held) // after the end, nothing is held
	s.held -= n
	if s.held == 0 && n > 0 {
		b.SetHolder(s, false)
	}
	s.heldMu.Unlock()
	if n > 0 {
		b.Release(n)
	}
}

// Held is what the session holds of the shared budget.
func (s *Session) Held() int64 {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	return s.held
}

func (s *Session) releaseHeld() {
	s.heldMu.Lock()
	s.over = true
	n := s.held
	s.held = 0
	s.heldMu.Unlock()
	if b := s.cfg.Shared; b != nil {
		b.SetHolder(s, false)
		if n > 0 {
			b.Release(n)
		}
	}
}

// Squeeze cuts a write in progress to StallTimeout: the shared budget has
// a waiter and this session holds part of it (budget.Holder).
func (s *Session) Squeeze() {
	if !s.writing.Load() || s.ctx.Err() != nil {
		return
	}
	d, ok := s.conn.(interface{ SetWriteDeadline(time.Time) error })
	if !ok || s.cfg.StallTimeout >= s.cfg.WriteTimeout {
		return // a connection without deadlines keeps its timer
	}
	s.squeezed.Store(true)
	d.SetWriteDeadline(time.Now().Add(s.cfg.StallTimeout))
}

// writeTimeout is the deadline of the next write.
func (s *Session) writeTimeout() time.Duration {
	if b := s.cfg.Shared; b != nil && s.cfg.StallTimeout < s.cfg.WriteTimeout && s.Held() > 0 && b.Pressed() {
		s.squeezed.Store(true)
		return s.cfg.StallTimeout
	}
	return s.cfg.WriteTimeout
}

func (s *Session) endedError() error {
	return fmt.Errorf("session over: %w", context.Cause(s.ctx))
}

// SetFinal sets the frame written after everything queued when the
// session ends; the first call wins, and it reports whether it did.
func (s *Session) SetFinal(frame []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.final != nil {
		return false
	}
	s.final = frame
	return true
}

// Fail sets final as the final frame and ends the session with err.
func (s *Session) Fail(err error, final []byte) {
	if final != nil {
		s.SetFinal(final)
	}
	s.cancel(err)
}

// Queued is how many bytes wait for the writer.
func (s *Session) Queued() int64 { return s.queue.InUse() }

func (s *Session) touch() { s.lastIO.Store(time.Now().UnixNano()) }

func (s *Session) take() []frame {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.frames
	s.frames = nil
	return f
}

func (s *Session) queueEmpty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.frames) == 0
}

// writer writes queued frames until the session ends, then what is still
// queued and the final frame, and half-closes.
func (s *Session) writer() error {
	// The buffer is held only while frames flow: an idle session (most of
	// them, between requests) keeps no write buffer.
	var w *bufio.Writer
	var err error
	write := func(frames []frame) {
		for _, f := range frames {
			// The buffers of one frame go out one after the other: only
			// this goroutine writes.
			for _, b := range f.bufs {
				if err != nil {
					break
				}
				if w == nil {
					w = s.getBuffer()
				}
				_, err = w.Write(b)
			}
			s.queue.Release(f.n)
			if f.done != nil {
				f.done()
			}
		}
	}
	flush := func() {
		if w == nil {
			return
		}
		if err == nil {
			err = w.Flush()
		}
		s.putBuffer(w)
		w = nil
	}
	for {
		select {
		case <-s.wake:
			write(s.take())
			if err == nil && s.queueEmpty() {
				flush()
			}
			if err != nil {
				if w != nil {
					s.putBuffer(w)
				}
				err = fmt.Errorf("writing to the peer: %w", err)
				s.cancel(err)
				return err
			}
		case <-s.ctx.Done():
			s.mu.Lock()
			frames, final := s.frames, s.final
			s.frames = nil
			s.mu.Unlock()
			write(frames)
			if final != nil && err == nil {
				if w == nil {
					w = s.getBuffer()
				}
				_, err = w.Write(final) // not queued: no budget to release
			}
			flush()
			if err == nil && final != nil {
				s.wroteFin.Store(true)
			}
			if cw, ok := s.conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			if err != nil {
				return fmt.Errorf("writing to the peer at the end: %w", err)
			}
			return nil
		}
	}
}

// bufferPool holds write buffers of the default size between bursts.
var bufferPool sync.Pool

func (s *Session) getBuffer() *bufio.Writer {
	if s.cfg.BufferSize == defaultBuffer {
		if w, ok := bufferPool.Get().(*bufio.Writer); ok {
			w.Reset(deadlineWriter{s})
			return w
		}
	}
	return bufio.NewWriterSize(deadlineWriter{s}, s.cfg.BufferSize)
}

func (s *Session) putBuffer(w *bufio.Writer) {
	if s.cfg.BufferSize == defaultBuffer {
		w.Reset(nil) // drops the session
		bufferPool.Put(w)
	}
}

// deadlineWriter arms WriteTimeout before every write.
type deadlineWriter struct{ s *Session }

func (w deadlineWriter) Write(p []byte) (int, error) {
	// A large write goes in pieces, each with its own deadline: a timeout
	// means the peer took nothing for that long, not that a slow peer
	// took a whole chunk too slowly.
	var n int
	for n < len(p) {
		m, err := w.write(p[n:min(len(p), n+writePiece)])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// writePiece is the most one deadline covers.
const writePiece = 64 << 10

func (w deadlineWriter) write(p []byte) (int, error) {
	s := w.s
	s.squeezed.Store(false)
	timeout := s.writeTimeout()
	s.writing.Store(true)
	disarm := s.arm(func(t time.Time) error {
		d, ok := s.conn.(interface{ SetWriteDeadline(time.Time) error })
		if !ok {
			return errors.ErrUnsupported
		}
		return d.SetWriteDeadline(t)
	}, time.Now().Add(timeout))
	n, err := s.conn.Write(p)
	s.writing.Store(false)
	disarm()
	if n > 0 {
		s.touch()
	}
	if err != nil && isTimeout(err) {
		if s.squeezed.Load() {
			err = fmt.Errorf("the peer read nothing for %v while other sessions waited for the gateway's shared buffer: %w", s.cfg.StallTimeout, err)
		} else {
			err = fmt.Errorf("the peer read nothing for %v: %w", s.cfg.WriteTimeout, err)
		}
	}
	return n, err
}

// arm sets a deadline with set, or, where the connection has none, a
// timer that closes it; the returned func disarms the timer.
func (s *Session) arm(set func(time.Time) error, at time.Time) (disarm func()) {
	if set(at) == nil {
		return func() {}
	}
	t := time.AfterFunc(time.Until(at), func() { s.conn.Close() })
	return func() { t.Stop() }
}

// isTimeout is a deadline that passed. Not net.Error's Timeout: EAGAIN
// says true there, and a non-blocking pipe that returns it has not timed
// out (reporting it as "the peer read nothing" misled once).
func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// IdleError reports a session ended for lack of traffic.
type IdleError struct {
	Idle time.Duration
	Err  error
}

func (e *IdleError) Error() string {
	return fmt.Sprintf("no traffic from or to the peer for %v: %v", e.Idle, e.Err)
}
func (e *IdleError) Unwrap() error { return e.Err }
func (e *IdleError) Timeout() bool { return true }

// Reader reads the connection with the idle deadline armed before every
// read; it fails once the session ends. Use one Reader at a time.
func (s *Session) Reader() io.Reader { return reader{s} }

type reader struct{ s *Session }

func (r reader) Read(p []byte) (int, error) {
	s := r.s
	setRead := func(t time.Time) error {
		d, ok := s.conn.(interface{ SetReadDeadline(time.Time) error })
		if !ok {
			return errors.ErrUnsupported
		}
		return d.SetReadDeadline(t)
	}
	for {
		if s.ctx.Err() != nil {
			return 0, s.endedError()
		}
		// Idle means no traffic either way: a peer reading a long reply
		// while sending nothing is alive.
		at := time.Unix(0, s.lastIO.Load()).Add(s.cfg.IdleTimeout)
		if !time.Now().Before(at) {
			return 0, &IdleError{Idle: s.cfg.IdleTimeout, Err: os.ErrDeadlineExceeded}
		}
		disarm := s.arm(setRead, at)
		// Checked after arming: an end between the check above and the arm
		// would otherwise be overridden by the new deadline.
		if s.ctx.Err() != nil {
			disarm()
			return 0, s.endedError()
		}
		n, err := s.conn.Read(p)
		disarm()
		if n > 0 {
			s.touch()
			if isTimeout(err) {
				err = nil
			}
			return n, err
		}
		if err != nil && s.ctx.Err() != nil {
			return 0, s.endedError()
		}
		if err != nil && isTimeout(err) {
			continue // the loop decides: re-armed if the writer made progress
		}
		return n, err
	}
}

// drain reads and discards input after a final frame, so that the peer,
// still writing, reads the frame instead of a connection reset.
func (s *Session) drain() {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	set := func(t time.Time) error {
		d, ok := s.conn.(interface{ SetReadDeadline(time.Time) error })
		if !ok {
			return errors.ErrUnsupported
		}
		return d.SetReadDeadline(t)
	}
	disarm := s.arm(set, time.Now().Add(s.cfg.DrainTimeout))
	n, _ := io.CopyN(io.Discard, s.conn, MaxDrain)
	disarm()
	s.drained.Store(n)
}

// OrDefault is v if it is set (positive), else def: how a zero setting
// takes its default in the session and in the gateways' configurations.
func OrDefault[T int | int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}
