package rest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

// Limits defend the HTTP server against slow and oversized requests. The
// zero value of a field takes its default (DefaultLimits).
//
// A request body is not given one fixed total time, which would cut a
// large upload on a slow but honest link: each read may wait BodyTimeout
// for more bytes, and the body as a whole must keep up MinRate on average
// after a BodyTimeout grace. A client sending 1 byte a second is cut after
// about BodyTimeout; a 1 GiB index at 1 MiB/s is not.
type Limits struct {
	// HeaderTimeout bounds reading a request's line and headers.
	HeaderTimeout time.Duration
	// BodyTimeout is the longest wait for more of a request body, and the
	// grace before MinRate applies.
	BodyTimeout time.Duration
	// MinRate is the rate in bytes per second a request body must average
	// after the grace, and the extra time a response write gets per byte
	// (negative disables the rate; the BodyTimeout and WriteTimeout
	// waits still apply).
	MinRate int64
	// WriteTimeout is the longest a response write may wait for the
	// client to take it, plus its size at MinRate. Large writes go in
	// pieces of at most MinRate*WriteTimeout bytes (and 256 KiB), each
	// with its own deadline, so a client that takes nothing is cut after
	// at most about twice WriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout bounds a kept-alive connection between requests.
	IdleTimeout time.Duration
	// MaxJSONBody bounds the body of a REST (JSON) request.
	MaxJSONBody int64
	// Log, if set, records requests cut for sending too slowly.
	Log *slog.Logger
}

// DefaultLimits are the defaults of Limits and of serve's --http-* flags.
func DefaultLimits() Limits {
	return Limits{
		HeaderTimeout: 10 * time.Second,
		BodyTimeout:   30 * time.Second,
		MinRate:       4 << 10,
		WriteTimeout:  30 * time.Second,
		IdleTimeout:   2 * time.Minute,
		MaxJSONBody:   4 << 20,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.HeaderTimeout <= 0 {
		l.HeaderTimeout = d.HeaderTimeout
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = d.BodyTimeout
	}
	if l.MinRate == 0 {
		l.MinRate = d.MinRate
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = d.IdleTimeout
	}
	if l.MaxJSONBody <= 0 {
		l.MaxJSONBody = d.MaxJSONBody
	}
	return l
}

// NewServer returns an http.Server for h with the limits applied. It sets
// no ReadTimeout or WriteTimeout, which would be one fixed total per
// request; the per-read and per-write deadlines of Guard replace them.
func NewServer(h http.Handler, l Limits) *http.Server {
	l = l.withDefaults()
	return &http.Server{
		Handler:           l.Guard(h),
		ReadHeaderTimeout: l.HeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
	}
}

// Guard sets the body read and response write deadlines of every request
// to h as its bytes move (see Limits). It must be the outermost handler.
func (l Limits) Guard(h http.Handler) http.Handler {
	l = l.withDefaults()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// No write deadline is left from an earlier request on the
		// connection; writes set their own.
		rc.SetWriteDeadline(time.Time{})
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &guardedBody{ReadCloser: r.Body, rc: rc, l: &l, start: time.Now(), r: r}
		}
		h.ServeHTTP(&guardedWriter{ResponseWriter: w, rc: rc, l: &l, r: r}, r)
	})
}

// perBytes is how long n bytes may take at rate bytes per second.
func perBytes(n, rate int64) time.Duration {
	if rate <= 0 {
		return 0
	}
	return time.Duration(float64(n) / float64(rate) * float64(time.Second))
}

// guardedBody moves a request's read deadline before every read: at most
// BodyTimeout away, and no later than the body's MinRate allows.
type guardedBody struct {
	io.ReadCloser
	rc    *http.ResponseController
	l     *Limits
	r     *http.Request
	start time.Time
	n     int64
	ended bool
}

func (b *guardedBody) Read(p []byte) (int, error) {
	if b.ended {
		return b.ReadCloser.Read(p)
	}
	deadline := time.Now().Add(b.l.BodyTimeout)
	if b.l.MinRate > 0 {
		// Past this, the body has averaged less than MinRate.
		if byRate := b.start.Add(b.l.BodyTimeout + perBytes(b.n, b.l.MinRate)); byRate.Before(deadline) {
			deadline = byRate
		}
	}
	if err := b.rc.SetReadDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF:
		// The whole body is in: lift the deadline so that the server's
		// watch for a closed connection does not time out (which would
		// cancel the request's context) while the handler works on.
		b.ended = true
		b.rc.SetReadDeadline(time.Time{})
	case err != nil:
		// The deadline stays, so nothing more waits on this client.
		b.ended = true
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && b.l.Log != nil {
			b.l.Log.Info("request body cut: the client sent too slowly", "method", b.r.Method, "path", b.r.URL.Path,
				"remote", b.r.RemoteAddr, "bytes", b.n, "seconds", time.Since(b.start).Seconds(), "min_rate", b.l.MinRate)
		}
	}
	return n, err
}

// guardedWriter gives every response write a deadline: WriteTimeout plus
// its size at MinRate, a piece at a time (see piece).
type guardedWriter struct {
	http.ResponseWriter
	rc     *http.ResponseController
	l      *Limits
	r      *http.Request
	n      int64
	logged bool
}

func (w *guardedWriter) extend(n int64) {
	w.rc.SetWriteDeadline(time.Now().Add(w.l.WriteTimeout + perBytes(n, w.l.MinRate)))
}

func (w *guardedWriter) WriteHeader(code int) {
	w.extend(0)
	w.ResponseWriter.WriteHeader(code)
}

func (w *guardedWriter) Write(p []byte) (int, error) {
	// A large write goes a piece at a time, each with its own deadline,
	// as ReadFrom does.
	piece := int(w.piece())
	var total int
	for {
		q := p[:min(len(p), piece)]
		w.extend(int64(len(q)))
		n, err := w.ResponseWriter.Write(q)
		w.n += int64(n)
		total += n
		p = p[n:]
		if err != nil {
			w.timedOut(err)
			return total, err
		}
		if len(p) == 0 {
			return total, nil
		}
	}
}

// timedOut logs, once, a write that missed its deadline.
func (w *guardedWriter) timedOut(err error) {
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() && !w.logged && w.l.Log != nil {
		w.logged = true
		w.l.Log.Info("response cut: the client read too slowly", "method", w.r.Method, "path", w.r.URL.Path,
			"remote", w.r.RemoteAddr, "bytes", w.n, "write_timeout", w.l.WriteTimeout, "min_rate", w.l.MinRate)
	}
}

// maxPiece bounds the bytes one write deadline covers (see piece).
const maxPiece = 256 << 10

func (w *guardedWriter) piece() int64 { return w.l.piece() }

// piece is how many bytes one write deadline covers: at most maxPiece,
// and no more than MinRate moves in WriteTimeout, so that a deadline is
// never more than about twice WriteTimeout away and a client that takes
// nothing is cut after about that, whatever the size of the response.
func (l *Limits) piece() int64 {
	n := int64(maxPiece)
	if l.MinRate > 0 {
		if byRate := int64(float64(l.MinRate) * l.WriteTimeout.Seconds()); byRate < n {
			n = max(byRate, 1)
		}
	}
	return n
}

// ReadFrom keeps net/http's copy from a file, which uses sendfile, for a
// body of known length (an io.LimitedReader, as the casync HTTP store
// passes), a piece at a time with a fresh deadline before each: a deadline
// missed means the client took no piece in its time, not that the whole
// body was slower than MinRate. Any other source goes through Write, a
// deadline per write.
func (w *guardedWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	lr, limited := src.(*io.LimitedReader)
	if !ok || !limited {
		return io.Copy(writerOnly{w}, src)
	}
	piece := w.piece()
	var total int64
	for lr.N > 0 {
		want := min(lr.N, piece)
		w.extend(want)
		n, err := rf.ReadFrom(&io.LimitedReader{R: lr.R, N: want})
		lr.N -= n
		total += n
		w.n += n
		if err != nil {
			w.timedOut(err)
			return total, err
		}
		if n < want {
			break // the source ended
		}
	}
	return total, nil
}

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// Flush keeps streamed responses (grpc-gateway's, promhttp's) flushing.
func (w *guardedWriter) Flush() {
	w.extend(0)
	w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *guardedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// jsonBody is a REST request body under MaxJSONBody; the error handler
// asks it whether a decoding error was the limit.
type jsonBody struct {
	io.ReadCloser
	over bool
}

func (b *jsonBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var e *http.MaxBytesError
	if errors.As(err, &e) {
		b.over = true
	}
	return n, err
}

type jsonBodyKey struct{}

// limitJSON bounds the bodies of the REST routes while they are read
// (grpc-gateway would otherwise decode any size into memory), and refuses
// at once a body whose Content-Length is over the limit.
func limitJSON(limit int64, gw *runtime.ServeMux, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			_, out := runtime.MarshalerForRequest(gw, r)
			runtime.HTTPError(r.Context(), gw, out, w, r, errJSONTooLarge(limit))
			return
		}
		if err := validUTF8(r); err != nil {
			// grpc-gateway would pass it on and fail to marshal the
			// request: a 500 for the client's bad string.
			_, out := runtime.MarshalerForRequest(gw, r)
			runtime.HTTPError(r.Context(), gw, out, w, r, status.Error(codes.InvalidArgument, err.Error()))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			b := &jsonBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit)}
			r = r.WithContext(context.WithValue(r.Context(), jsonBodyKey{}, b))
			r.Body = b
		}
		h.ServeHTTP(w, r)
	})
}

// validUTF8 checks the path and query parameters, which become protobuf
// strings and so must be UTF-8.
func validUTF8(r *http.Request) error {
	if !utf8.ValidString(r.URL.Path) {
		return fmt.Errorf("path %q is not valid UTF-8", r.URL.Path)
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return fmt.Errorf("query %q: %v", r.URL.RawQuery, err)
	}
	for k, vs := range q {
		if !utf8.ValidString(k) {
			return fmt.Errorf("query parameter name %q is not valid UTF-8", k)
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Errorf("query parameter %s=%q is not valid UTF-8", k, v)
			}
		}
	}
	return nil
}

// routingErrorHandler keeps grpc-gateway's 404, 405 and 400 for requests
// that match no route (its default turns 405 into 501).
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	c := codes.InvalidArgument
	switch code {
	case http.StatusNotFound:
		c = codes.NotFound
	case http.StatusMethodNotAllowed:
		c = codes.Unimplemented
	}
	runtime.HTTPError(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: code, Err: status.Error(c, http.StatusText(code))})
}

func errJSONTooLarge(limit int64) error {
	return &runtime.HTTPStatusError{
		HTTPStatus: http.StatusRequestEntityTooLarge,
		Err:        status.Errorf(codes.InvalidArgument, "request body larger than %d bytes: REST requests are small JSON documents; send chunks and indexes over gRPC or the casync HTTP store", limit),
	}
}

// errorHandler writes grpc-gateway's JSON error with the status of
// casync.HTTPStatus, the one table of both HTTP surfaces.
func errorHandler(limit int64) runtime.ErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
		var set *runtime.HTTPStatusError
		switch b, _ := r.Context().Value(jsonBodyKey{}).(*jsonBody); {
		case b != nil && b.over:
			err = errJSONTooLarge(limit)
		case errors.As(err, &set):
			// A routing error (404, 405) or one chosen above: as it is.
		default:
			err = &runtime.HTTPStatusError{HTTPStatus: casync.HTTPStatusOf(err), Err: err}
		}
		runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
	}
}
