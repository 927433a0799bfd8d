package rest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

// Door answers the casync HTTP store's chunk reads (GET and HEAD of
// <Prefix><4 hex>/<64 hex>.cacnk) on plain-TCP connections itself, ahead
// of net/http, and hands every other request, with the rest of its
// connection, to the http.Server that serves Listener's result.
//
// Why: a chunk read is most of a casync or desync client's requests, and
// net/http's general machinery (a goroutine per request watching the
// connection, header maps, the 512-byte sniff before sendfile) cost about
// as much CPU per chunk as the kernel's part (BENCHMARKS.md, "serve all
// GET"). The door parses the one request shape it answers, sends the
// headers and then the stored file with sendfile, and keeps the
// connection for the next request.
//
// It answers only what it can answer well: a request that is not a
// well-formed HTTP/1.1 chunk read with no body, or that the door's
// Admit or the chunk service would refuse, goes to net/http unread, which
// answers it (and logs a refusal) exactly as it would without the door.
// So the door never writes an error, and net/http stays the only place
// that decides what a refusal looks like. A connection once handed over
// stays with net/http.
type Door struct {
	// Prefix is the path the chunks are under, "/casync/chunks/".
	Prefix string
	// Chunks is the chunk service.
	Chunks *client.Chunks
	// Admit decides from a request's credentials whether the door may
	// answer it, and returns the context (carrying the principal) to
	// call the chunk service in; false leaves the request to net/http.
	Admit func(ctx context.Context, cred DoorCredentials) (context.Context, bool)
	// Limits gives the header, idle and write timeouts (as NewServer's).
	Limits Limits
	Log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[*doorConn]struct{}
	closed bool
	wg     sync.WaitGroup
	date   atomic.Pointer[dateLine]
}

// DoorCredentials are the request headers Admit decides on.
type DoorCredentials struct {
	Authorization string
	// Origin and SecFetchSite mark requests made by web pages.
	Origin, SecFetchSite string
}

// doorHeaderMax bounds a request line and headers the door reads itself;
// a longer request goes to net/http (whose own limit is larger).
const doorHeaderMax = 4 << 10

// Listen returns the listener to give the http.Server: connections are
// accepted from ln, read by the door, and passed on (with what the door
// read and left) when a request is not one it answers. Shutdown stops it.
func (d *Door) Listen(ln net.Listener) net.Listener {
	d.Limits = d.Limits.withDefaults()
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.conns = make(map[*doorConn]struct{})
	l := &doorListener{Listener: ln, d: d, conns: make(chan net.Conn), errs: make(chan error), done: make(chan struct{})}
	go l.accept()
	return l
}

// Shutdown closes the door's idle connections, lets the ones answering a
// request finish it, and waits for them until ctx ends (then closes them
// all). The http.Server's Shutdown closes the listener.
func (d *Door) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	d.closed = true
	for c := range d.conns {
		if c.idle.Load() {
			// Wakes its read of the next request, which then sees closed.
			c.conn.SetReadDeadline(time.Unix(1, 0))
		}
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		d.mu.Lock()
		for c := range d.conns {
			c.conn.Close()
		}
		d.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

type doorListener struct {
	net.Listener
	d     *Door
	conns chan net.Conn // handed to net/http
	errs  chan error
	done  chan struct{}
	once  sync.Once
}

// accept takes every connection for the door. Accept errors go to
// net/http's Accept, which backs off on temporary ones (EMFILE) and ends
// on the rest; this loop waits for it to ask again.
func (l *doorListener) accept() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				continue
			}
			return
		}
		tc, ok := c.(*net.TCPConn)
		if !ok || !l.d.track(tc) {
			l.handOff(c)
			continue
		}
		go l.d.serve(l, tc)
	}
}

func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

func (l *doorListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *doorListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// handOff gives c to net/http, or closes it once the server no longer
// accepts.
func (l *doorListener) handOff(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

type doorConn struct {
	conn *net.TCPConn
	br   *bufio.Reader
	idle atomic.Bool
}

// track registers a connection; false once the door is shut.
func (d *Door) track(tc *net.TCPConn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

var doorReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, doorHeaderMax) }}

func (d *Door) serve(l *doorListener, tc *net.TCPConn) {
	defer d.wg.Done()
	c := &doorConn{conn: tc, br: doorReaders.Get().(*bufio.Reader)}
	c.br.Reset(tc)
	d.mu.Lock()
	d.conns[c] = struct{}{}
	d.mu.Unlock()
	handed := false
	defer func() {
		d.mu.Lock()
		delete(d.conns, c)
		d.mu.Unlock()
		if !handed {
			tc.Close()
			c.br.Reset(nil)
			doorReaders.Put(c.br)
		}
	}()
	for first := true; ; first = false {
		// Between requests the idle timeout applies; the first request,
		// like every request once its first byte is in, has the header
		// timeout (as net/http).
		wait := d.Limits.IdleTimeout
		if first {
			wait = d.Limits.HeaderTimeout
		}
		// Idle, with its deadline set, before it looks at closed: a
		// Shutdown either sees it idle and moves the deadline, or has
		// already set closed (see Shutdown).
		c.idle.Store(true)
		tc.SetReadDeadline(time.Now().Add(wait))
		if d.shut() {
			return
		}
		if _, err := c.br.Peek(1); err != nil {
			return
		}
		c.idle.Store(false)
		if d.shut() {
			return
		}
		tc.SetReadDeadline(time.Now().Add(d.Limits.HeaderTimeout))
		req, ok, err := readDoorRequest(c.br, d.Prefix)
		if err != nil {
			return // the client stopped sending mid-request
		}
		if ok {
			var keep bool
			ok, keep = d.answer(c, req)
			if ok && !keep {
				return
			}
		}
		if !ok {
			tc.SetReadDeadline(time.Time{})
			tc.SetWriteDeadline(time.Time{})
			handed = true
			l.handOff(&handedConn{Conn: tc, tc: tc, br: c.br})
			return
		}
	}
}

func (d *Door) shut() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// answer answers req if the door may and the chunk is there: ok is false
// when it wrote nothing and left the request unread for net/http, keep
// whether the connection may carry another request.
func (d *Door) answer(c *doorConn, req doorRequest) (ok, keep bool) {
	ctx, admitted := d.Admit(d.ctx, req.cred)
	if !admitted {
		return false, false
	}
	var (
		size int64
		body io.ReadCloser
	)
	if req.head {
		info, err := d.Chunks.Stat(ctx, req.id)
		if err != nil {
			return false, false
		}
		size = info.GetStoredSize()
	} else {
		rc, n, err := d.Chunks.OpenStored(ctx, req.id)
		if err != nil {
			return false, false
		}
		defer rc.Close()
		body, size = rc, n
	}
	c.br.Discard(req.n)
	head := d.header(size, req.close)
	w := &deadlineWriter{conn: c.conn, l: &d.Limits}
	if body == nil {
		_, err := w.write(head)
		return true, err == nil && !req.close
	}
	var err error
	if b, isBytes := body.(*client.StoredBytes); isBytes {
		// In memory (over gRPC): headers and chunk in one writev.
		err = w.writev(head, b.Bytes())
	} else if size == 0 {
		_, err = w.write(head)
	} else if err = w.writeMore(head); err == nil {
		err = w.readFrom(body, size)
	}
	var ne net.Error
	switch {
	case err == nil || d.ctx.Err() != nil:
	case errors.As(err, &ne) && ne.Timeout() && d.Limits.Log != nil:
		d.Limits.Log.Info("response cut: the client read too slowly", "method", req.method(), "chunk", req.id.String(),
			"remote", c.conn.RemoteAddr().String(), "bytes", w.n, "write_timeout", d.Limits.WriteTimeout, "min_rate", d.Limits.MinRate)
	case d.Log != nil:
		d.Log.Debug("chunk download broken off", "chunk", req.id.String(), "remote", c.conn.RemoteAddr().String(), "bytes", w.n, "err", err)
	}
	// A short body leaves the response shorter than its Content-Length:
	// the connection closes, so the client sees a broken download, never
	// a short chunk.
	return true, err == nil && !req.close
}

// header is the response head of a chunk of size bytes: what net/http
// sends for the same response.
func (d *Door) header(size int64, close bool) []byte {
	b := make([]byte, 0, 160)
	b = append(b, "HTTP/1.1 200 OK\r\nContent-Length: "...)
	b = strconv.AppendInt(b, size, 10)
	b = append(b, "\r\nContent-Type: application/octet-stream\r\nDate: "...)
	b = append(b, d.httpDate()...)
	if close {
		b = append(b, "\r\nConnection: close"...)
	}
	return append(b, "\r\n\r\n"...)
}

type dateLine struct {
	sec  int64
	text string
}

// httpDate is the Date header's value, formatted once a second.
func (d *Door) httpDate() string {
	now := time.Now()
	if p := d.date.Load(); p != nil && p.sec == now.Unix() {
		return p.text
	}
	p := &dateLine{sec: now.Unix(), text: now.UTC().Format(timeFormatHTTP)}
	d.date.Store(p)
	return p.text
}

const timeFormatHTTP = "Mon, 02 Jan 2006 15:04:05 GMT"

// deadlineWriter gives every write to the client a deadline, as Guard
// does for net/http's responses: WriteTimeout plus the piece's size at
// MinRate, a piece at a time.
type deadlineWriter struct {
	conn *net.TCPConn
	l    *Limits
	n    int64 // bytes written
}

func (w *deadlineWriter) extend(n int64) {
	w.conn.SetWriteDeadline(time.Now().Add(w.l.WriteTimeout + perBytes(n, w.l.MinRate)))
}

func (w *deadlineWriter) piece() int64 { return w.l.piece() }

func (w *deadlineWriter) write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		q := p[:min(int64(len(p)), w.piece())]
		w.extend(int64(len(q)))
		n, err := w.conn.Write(q)
		total += n
		w.n += int64(n)
		p = p[n:]
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// writeMore writes the headers of a body that follows by sendfile with
// MSG_MORE: the kernel holds them for the body's first segment instead
// of sending them alone (what TCP_CORK does, without the system call to
// uncork: sendfile's last page goes without the flag).
func (w *deadlineWriter) writeMore(p []byte) error {
	rc, err := w.conn.SyscallConn()
	if err != nil {
		_, err = w.write(p)
		return err
	}
	w.extend(int64(len(p)))
	var werr error
	err = rc.Write(func(fd uintptr) bool {
		n, err := unix.SendmsgN(int(fd), p, nil, nil, unix.MSG_MORE)
		switch {
		case err == unix.EAGAIN:
			return false // wait until writable
		case err != nil:
			werr = err
			return true
		}
		w.n += int64(n)
		p = p[n:]
		return len(p) == 0
	})
	if err == nil {
		err = werr
	}
	return err
}

func (w *deadlineWriter) writev(head, body []byte) error {
	if int64(len(head)+len(body)) > w.piece() {
		if _, err := w.write(head); err != nil {
			return err
		}
		_, err := w.write(body)
		return err
	}
	w.extend(int64(len(head) + len(body)))
	bufs := net.Buffers{head, body}
	n, err := bufs.WriteTo(w.conn)
	w.n += n
	return err
}

// readFrom sends size bytes of src: from a file, with sendfile.
func (w *deadlineWriter) readFrom(src io.Reader, size int64) error {
	lr := &io.LimitedReader{R: src, N: size}
	for lr.N > 0 {
		want := min(lr.N, w.piece())
		w.extend(want)
		n, err := w.conn.ReadFrom(&io.LimitedReader{R: lr.R, N: want})
		lr.N -= n
		w.n += n
		if err != nil {
			return err
		}
		if n < want {
			return io.ErrUnexpectedEOF
		}
	}
	return nil
}

// handedConn is a connection handed to net/http: the bytes the door read
// and did not answer come first. It keeps the TCP connection's ReadFrom
// (net/http's sendfile) and CloseWrite, but not its WriteTo, which would
// skip those bytes.
type handedConn struct {
	net.Conn
	tc *net.TCPConn
	mu sync.Mutex
	br *bufio.Reader // nil once drained
}

func (c *handedConn) ReadFrom(r io.Reader) (int64, error) { return c.tc.ReadFrom(r) }
func (c *handedConn) CloseWrite() error                   { return c.tc.CloseWrite() }

func (c *handedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.br != nil {
		if c.br.Buffered() > 0 {
			n, err := c.br.Read(p)
			c.mu.Unlock()
			return n, err
		}
		c.br.Reset(nil)
		doorReaders.Put(c.br)
		c.br = nil
	}
	c.mu.Unlock()
	return c.tc.Read(p)
}

// doorRequest is a chunk read the door may answer.
type doorRequest struct {
	id    client.ID
	head  bool
	close bool // Connection: close
	cred  DoorCredentials
	n     int // bytes of the request line and headers
}

func (r *doorRequest) method() string {
	if r.head {
		return "HEAD"
	}
	return "GET"
}

// readDoorRequest reads a request's line and headers from br without
// consuming them. ok is false when the request is not a chunk read the
// door answers (net/http gets it, unread); err when the client stopped
// before the headers ended.
func readDoorRequest(br *bufio.Reader, prefix string) (req doorRequest, ok bool, err error) {
	seen := 0 // bytes searched for the blank line, less 3
	for n := 1; ; {
		if _, err := br.Peek(n); err != nil {
			return req, false, err
		}
		b, _ := br.Peek(br.Buffered())
		if end := bytes.Index(b[seen:], []byte("\r\n\r\n")); end >= 0 {
			req, ok := parseDoorRequest(b[:seen+end+4], prefix)
			return req, ok, nil
		}
		if len(b) >= doorHeaderMax {
			return req, false, nil // longer than the door reads
		}
		// Wait for at least one more byte (Peek reads what is there).
		seen, n = max(0, len(b)-3), len(b)+1
	}
}

// parseDoorRequest parses a request line and headers (ending in the
// blank line). It accepts only the shape the door answers and is strict
// where parsers may disagree: any doubt (a bare CR or LF, a folded or
// unnamed header, a body, a second Host or credential) leaves the
// request to net/http, so both always agree on where a request ends.
func parseDoorRequest(b []byte, prefix string) (doorRequest, bool) {
	var req doorRequest
	req.n = len(b)
	line, rest, _ := bytes.Cut(b, []byte("\r\n"))
	method, line, ok1 := bytes.Cut(line, []byte(" "))
	target, proto, ok2 := bytes.Cut(line, []byte(" "))
	if !ok1 || !ok2 || string(proto) != "HTTP/1.1" {
		return req, false
	}
	switch string(method) {
	case "GET":
	case "HEAD":
		req.head = true
	default:
		return req, false
	}
	path, isChunk := bytes.CutPrefix(target, []byte(prefix))
	if !isChunk {
		return req, false
	}
	id, err := casync.ChunkID(string(path))
	if err != nil {
		return req, false
	}
	req.id = id
	hosts, auths := 0, 0
	for {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(line) == 0 {
			break
		}
		if bytes.ContainsAny(line, "\r\n\x00") || line[0] == ' ' || line[0] == '\t' {
			return req, false
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found || len(name) == 0 || !isToken(name) {
			return req, false
		}
		value = bytes.Trim(value, " \t")
		switch {
		case bytes.EqualFold(name, []byte("Host")):
			hosts++
		case bytes.EqualFold(name, []byte("Authorization")):
			auths++
			req.cred.Authorization = string(value)
		case bytes.EqualFold(name, []byte("Origin")):
			req.cred.Origin = string(value)
		case bytes.EqualFold(name, []byte("Sec-Fetch-Site")):
			req.cred.SecFetchSite = string(value)
		case bytes.EqualFold(name, []byte("Content-Length")):
			if string(value) != "0" {
				return req, false
			}
		case bytes.EqualFold(name, []byte("Connection")):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = bytes.Trim(tok, " \t")
				switch {
				case bytes.EqualFold(tok, []byte("close")):
					req.close = true
				case bytes.EqualFold(tok, []byte("upgrade")):
					return req, false
				}
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")),
			bytes.EqualFold(name, []byte("Expect")),
			bytes.EqualFold(name, []byte("Upgrade")):
			return req, false
		}
	}
	return req, hosts == 1 && auths <= 1
}

// isToken reports whether b is an HTTP token (a header name).
func isToken(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || bytes.IndexByte([]byte(`"(),/:;<=>?@[\]{}`), c) >= 0 {
			return false
		}
	}
	return true
}
