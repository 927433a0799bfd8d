package casync

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// HTTPStore serves casync's HTTP store layout, the contract of desync's
// chunk server:
//
//	GET|HEAD|PUT <prefix>/chunks/<4 hex>/<64 hex>.cacnk
//	GET|HEAD|PUT <prefix>/indexes/<name>
//
// so that `casync extract --store=http://HOST/casync/chunks
// http://HOST/casync/indexes/x.caibx out` works. Mount it under its prefix
// with http.StripPrefix.
type HTTPStore struct {
	// Chunks is the chunk service: client.NewGRPC, or client.NewLocal in
	// the process that runs it.
	Chunks *client.Chunks
	// Catalog is the catalog service (client.NewCatalogGRPC); its errors
	// are typed, so the one status table serves both services.
	Catalog *client.Catalog
	Log     *slog.Logger
	// MaxIndexSize bounds a PUT index body (default format.MaxIndex);
	// the catalog applies its own limit too.
	MaxIndexSize int64
}

// maxChunkBody bounds a PUT chunk body: the largest CHUNK payload.
const maxChunkBody = caproto.MaxFrameSize - caproto.HeaderSize - 8 - caproto.IDSize

func (h *HTTPStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/")
	switch {
	case strings.HasPrefix(path, "chunks/"):
		h.chunk(w, r, strings.TrimPrefix(path, "chunks/"))
	case strings.HasPrefix(path, "indexes/"):
		h.index(w, r, strings.TrimPrefix(path, "indexes/"))
	default:
		http.Error(w, "not found: the casync store has chunks/ and indexes/", http.StatusNotFound)
	}
}

// ChunkID checks "<4 hex>/<64 hex>.cacnk": the path is the HTTP wire's
// form of the id.
func ChunkID(rest string) (client.ID, error) {
	dir, file, ok := strings.Cut(rest, "/")
	idHex, isChunk := strings.CutSuffix(file, ".cacnk")
	if !ok || !isChunk || len(idHex) != 64 || len(dir) != 4 || !strings.HasPrefix(idHex, dir) {
		return client.ID{}, fmt.Errorf("chunk path %q: want <first 4 hex of id>/<64 hex id>.cacnk", rest)
	}
	var id client.ID
	if _, err := hex.Decode(id[:], []byte(idHex)); err != nil {
		return client.ID{}, fmt.Errorf("chunk path %q: id is not hex", rest)
	}
	return id, nil
}

func (h *HTTPStore) chunk(w http.ResponseWriter, r *http.Request, rest string) {
	id, err := ChunkID(rest)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodHead:
		info, err := h.Chunks.Stat(r.Context(), id)
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(info.GetStoredSize(), 10))
	case http.MethodGet:
		// As stored: a .cacnk is the zstd frame, never decoded on the way
		// and not verified here (casync and desync check every chunk they
		// fetch). Streamed from the store's reader, at most its checked
		// size; from a file, net/http sends it with sendfile. On plain TCP
		// most GETs never get here: rest.Door answers them first.
		rc, size, err := h.Chunks.OpenStored(r.Context(), id)
		if err != nil {
			h.fail(w, err)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		// A short copy leaves the response shorter than its
		// Content-Length, which net/http answers by closing the
		// connection: the client sees a broken download, never a short
		// chunk.
		var n int64
		if b, ok := rc.(*client.StoredBytes); ok {
			// In memory (over gRPC): one write, no copy through a buffer.
			var k int
			k, err = w.Write(b.Bytes())
			n = int64(k)
		} else {
			n, err = io.Copy(w, io.LimitReader(rc, size))
		}
		if err != nil && n < size && h.Log != nil && r.Context().Err() == nil {
			h.Log.Debug("chunk download broken off", "chunk", id.String(), "bytes", n, "of", size, "err", err)
		}
	case http.MethodPut:
		h.putChunk(w, r, id)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// putChunk stores a compressed chunk. HTTP does not say which digest
// algorithm made the id, so SHA-512/256 (casync's default) is tried first,
// then SHA-256; the chunk service verifies either way.
func (h *HTTPStore) putChunk(w http.ResponseWriter, r *http.Request, id client.ID) {
	body, err := readChunkBody(w, r)
	if err != nil {
		bodyFail(w, fmt.Sprintf("chunk %s", id), err, maxChunkBody)
		return
	}
	enc := encodingOf(&caproto.Chunk{Flags: caproto.ChunkCompressed, Data: body})
	if enc == chunkbridgev1.Encoding_ENCODING_UNSPECIFIED {
		http.Error(w, fmt.Sprintf("chunk %s: body is not zstd, xz or gzip; a .cacnk is compressed", id), http.StatusBadRequest)
		return
	}
	var res client.Result
	for _, alg := range []chunkbridgev1.DigestAlgorithm{chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256} {
		res, err = h.upload(r.Context(), client.Upload{ID: id, Algorithm: alg, Encoding: enc, Data: body})
		if err != nil {
			h.fail(w, err)
			return
		}
		if !errors.Is(res.Err, apierr.ErrDataLoss) {
			break
		}
	}
	switch {
	case errors.Is(res.Err, apierr.ErrDataLoss):
		// Data loss on upload is the client's data not matching its id,
		// not damage in the store: a client error.
		h.fail(w, fmt.Errorf("%w: chunk %s: the uploaded data hashes to this id with neither SHA-512/256 nor SHA-256; check the chunk file and its name", apierr.ErrInvalid, id))
	case res.Err != nil:
		h.fail(w, res.Err)
	case res.Created:
		w.WriteHeader(http.StatusCreated)
	}
}

// upload stores one chunk over a stream of its own and returns its
// acknowledgement; the error is the stream's.
func (h *HTTPStore) upload(ctx context.Context, up client.Upload) (client.Result, error) {
	u, err := h.Chunks.NewUploader(ctx, client.UploadOptions{Window: 1, WindowBytes: int64(len(up.Data))})
	if err != nil {
		return client.Result{}, err
	}
	var res client.Result
	if err := u.Put(ctx, up, func(r client.Result) { res = r }); err != nil {
		u.Abort()
		return client.Result{}, err
	}
	if err := u.Close(); err != nil {
		return client.Result{}, err
	}
	return res, nil
}

// firstBodyAlloc is what a chunk body may reserve before its bytes arrive:
// enough for most casync chunks in one allocation, small enough that many
// slow clients claiming a large Content-Length reserve little.
const firstBodyAlloc = 256 << 10

// readChunkBody reads a PUT chunk body of at most maxChunkBody bytes. With
// a Content-Length the buffer grows by doubling only as bytes arrive and
// ends exactly that size, so there is no final copy or slack capacity.
func readChunkBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > maxChunkBody {
		return nil, &http.MaxBytesError{Limit: maxChunkBody}
	}
	body := http.MaxBytesReader(w, r.Body, maxChunkBody)
	if r.ContentLength < 0 {
		return io.ReadAll(body)
	}
	want := int(r.ContentLength)
	buf := make([]byte, 0, min(want, firstBodyAlloc))
	for len(buf) < want {
		if len(buf) == cap(buf) {
			buf = append(make([]byte, 0, min(want, 2*cap(buf))), buf...)
		}
		n, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) == want {
			break
		}
		if err == io.EOF {
			// net/http ends a body at its Content-Length; shorter is an
			// aborted request.
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// bodyFail answers a request whose body could not be read: 413 over the
// limit, 408 when the client sent too slowly (see rest.Limits), else 400.
func bodyFail(w http.ResponseWriter, what string, err error, limit int64) {
	var tooLarge *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, fmt.Sprintf("%s: request body larger than %d bytes", what, limit), http.StatusRequestEntityTooLarge)
	case errors.As(err, &ne) && ne.Timeout():
		http.Error(w, fmt.Sprintf("%s: request body arrived too slowly: %v", what, err), http.StatusRequestTimeout)
	default:
		http.Error(w, fmt.Sprintf("%s: reading the request body: %v", what, err), http.StatusBadRequest)
	}
}

func (h *HTTPStore) index(w http.ResponseWriter, r *http.Request, name string) {
	if !utf8.ValidString(name) {
		// It would fail as a protobuf string, a 500 for the client's mistake.
		http.Error(w, fmt.Sprintf("index name %q is not valid UTF-8", name), http.StatusBadRequest)
		return
	}
	switch r.Method {
	case http.MethodHead:
		info, err := h.Catalog.StatIndex(r.Context(), name)
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(info.Size, 10))
	case http.MethodGet:
		// GetIndex has the catalog's first answer: whether the index
		// exists is known before any status line is written.
		rd, err := h.Catalog.GetIndex(r.Context(), name)
		if err != nil {
			h.fail(w, err)
			return
		}
		defer rd.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		out := &writeErr{w: w}
		if _, err := rd.WriteTo(out); err != nil && out.err == nil && h.Log != nil {
			h.Log.Warn("index download broken off", "index", name, "err", err)
		}
	case http.MethodPut:
		h.putIndex(w, r, name)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// putIndex streams the body to the catalog, which publishes the index only
// when the body is complete, valid, and every chunk is stored. The body is
// parsed as it arrives, so garbage is refused after its first 64 bytes and
// a malformed table at the first bad entry, before more is read or spooled.
func (h *HTTPStore) putIndex(w http.ResponseWriter, r *http.Request, name string) {
	// The catalog checks the name too, but only after the body is read.
	if _, err := caindex.CleanWritableName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	limit := h.maxIndexSize()
	what := "index " + name
	if r.ContentLength > limit {
		bodyFail(w, what, &http.MaxBytesError{Limit: limit}, limit)
		return
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	parser := caindex.NewParser(limit, nil)
	// The header is read into a small buffer first: a client that never
	// sends a valid one costs neither a large buffer nor a catalog stream.
	head := make([]byte, caindex.HeaderSize+caindex.TableHeaderSize)
	n, err := io.ReadFull(body, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		bodyFail(w, what, err, limit)
		return
	}
	if _, perr := parser.Write(head[:n]); perr != nil || n < len(head) {
		if perr == nil {
			perr = parser.Close()
		}
		indexFail(w, what, perr, limit)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel() // a refused body abandons the stream: nothing is published
	iw, err := h.Catalog.PutIndex(ctx, name)
	if err == nil {
		_, err = iw.Write(head)
	}
	// Messages grow to 1 MiB only as fast as the body fills them, so a
	// slow client holds little.
	buf := make([]byte, 64<<10)
	for err == nil {
		n, rerr := io.ReadFull(body, buf)
		if _, perr := parser.Write(buf[:n]); perr != nil {
			indexFail(w, what, perr, limit)
			return
		}
		if n > 0 {
			_, err = iw.Write(buf[:n]) // sent before it returns: buf is free
		}
		if n == len(buf) && len(buf) < 1<<20 {
			buf = make([]byte, 2*len(buf))
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			bodyFail(w, what, rerr, limit)
			return
		}
	}
	if err == nil {
		if perr := parser.Close(); perr != nil {
			indexFail(w, what, perr, limit)
			return
		}
	}
	var info client.IndexInfo
	if err == nil {
		info, err = iw.Commit()
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "{\"name\":%q,\"size\":%d,\"chunkCount\":%d}\n", info.Name, info.Size, info.ChunkCount)
}

// writeErr keeps the error of the writer it wraps, to tell a client that
// went away from a broken catalog stream.
type writeErr struct {
	w   io.Writer
	err error
}

func (w *writeErr) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (h *HTTPStore) maxIndexSize() int64 {
	if h.MaxIndexSize > 0 {
		return h.MaxIndexSize
	}
	return format.MaxIndex
}

// indexFail answers a body that is not a casync index: 413 past the limit,
// else 400 with the parser's reason (which names the offset and field).
func indexFail(w http.ResponseWriter, what string, err error, limit int64) {
	if errors.Is(err, caindex.ErrTooLarge) {
		http.Error(w, fmt.Sprintf("%s: larger than %d bytes", what, limit), http.StatusRequestEntityTooLarge)
		return
	}
	http.Error(w, fmt.Sprintf("%s: not a casync index (.caibx/.caidx): %v", what, err), http.StatusBadRequest)
}

// fail writes a service's error as the HTTP status of its class
// (HTTPStatus of apierr.Code), with its message as text.
func (h *HTTPStore) fail(w http.ResponseWriter, err error) {
	c := apierr.Code(err)
	code := HTTPStatusOf(err)
	if code >= 500 && h.Log != nil {
		h.Log.Warn("casync HTTP store", "code", c.String(), "err", err)
	}
	http.Error(w, err.Error(), code)
}

// HTTPStatusOf is HTTPStatus of err's class, except for a tenant's quota
// (apierr.ErrQuota): 507 Insufficient Storage, which tells a client that
// retrying will not help, where a used-up budget is 429.
func HTTPStatusOf(err error) int {
	if errors.Is(apierr.FromStatus(err), apierr.ErrQuota) {
		return http.StatusInsufficientStorage
	}
	return HTTPStatus(apierr.Code(err))
}

// HTTPStatus is the one mapping from the services' error classes (the
// codes of apierr's sentinels, apierr.Code) to HTTP statuses, for the
// casync HTTP store and the REST routes: a client's mistake is 4xx, a
// fault of the server or its storage 5xx (503 when storage is unreachable,
// so clients retry). It is grpc-gateway's table except where the
// services' meaning differs; a code not in it is 500.
func HTTPStatus(c codes.Code) int {
	if s, ok := httpStatusOfCode[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

var httpStatusOfCode = map[codes.Code]int{
	codes.OK:                http.StatusOK,
	codes.Canceled:          499, // the client went away (context.Canceled)
	codes.InvalidArgument:   http.StatusBadRequest,
	codes.OutOfRange:        http.StatusBadRequest,
	codes.NotFound:          http.StatusNotFound,        // apierr.ErrNotFound
	codes.AlreadyExists:     http.StatusConflict,        // apierr.ErrExists
	codes.Aborted:           http.StatusConflict,        // apierr.ErrBusy
	codes.PermissionDenied:  http.StatusForbidden,       // apierr.ErrPermission
	codes.Unauthenticated:   http.StatusUnauthorized,    // apierr.ErrUnauthenticated
	codes.ResourceExhausted: http.StatusTooManyRequests, // apierr.ErrExhausted
	// An index or snapshot that references chunks not yet uploaded
	// (apierr.ErrMissingChunks): the client must upload them first.
	codes.FailedPrecondition: http.StatusConflict,
	// Stored data fails its own check; uploads that do not match their id
	// are turned into ErrInvalid where they are sent.
	codes.DataLoss:         http.StatusInternalServerError,
	codes.Unimplemented:    http.StatusNotImplemented,
	codes.Unavailable:      http.StatusServiceUnavailable, // apierr.ErrUnavailable
	codes.DeadlineExceeded: http.StatusGatewayTimeout,
	codes.Internal:         http.StatusInternalServerError,
	codes.Unknown:          http.StatusInternalServerError,
}
