package casync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caproto"
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
	Chunks  chunkbridgev1.ChunkServiceClient
	Catalog chunkbridgev1.CatalogServiceClient
	Log     *slog.Logger
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

// chunkID checks "<4 hex>/<64 hex>.cacnk".
func chunkID(rest string) (string, error) {
	dir, file, ok := strings.Cut(rest, "/")
	idHex, isChunk := strings.CutSuffix(file, ".cacnk")
	if !ok || !isChunk || len(idHex) != 64 || len(dir) != 4 || !strings.HasPrefix(idHex, dir) {
		return "", fmt.Errorf("chunk path %q: want <first 4 hex of id>/<64 hex id>.cacnk", rest)
	}
	if _, err := hex.DecodeString(idHex); err != nil {
		return "", fmt.Errorf("chunk path %q: id is not hex", rest)
	}
	return strings.ToLower(idHex), nil
}

func (h *HTTPStore) chunk(w http.ResponseWriter, r *http.Request, rest string) {
	id, err := chunkID(rest)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodHead:
		resp, err := h.Chunks.StatChunk(r.Context(), &chunkbridgev1.StatChunkRequest{Id: id})
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(resp.GetChunk().GetStoredSize(), 10))
	case http.MethodGet:
		stream, err := h.Chunks.DownloadChunks(r.Context(), &chunkbridgev1.DownloadChunksRequest{Ids: []string{id}, Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD})
		if err != nil {
			h.fail(w, err)
			return
		}
		resp, err := stream.Recv()
		if err == nil && resp.GetCode() != 0 {
			err = status.Error(codes.Code(resp.GetCode()), resp.GetMessage())
		}
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(resp.GetData())))
		w.Write(resp.GetData())
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
func (h *HTTPStore) putChunk(w http.ResponseWriter, r *http.Request, id string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxChunkBody))
	if err != nil {
		http.Error(w, fmt.Sprintf("chunk %s: body: %v (at most %d bytes)", id, err, maxChunkBody), http.StatusRequestEntityTooLarge)
		return
	}
	enc := encodingOf(&caproto.Chunk{Flags: caproto.ChunkCompressed, Data: body})
	if enc == chunkbridgev1.Encoding_ENCODING_UNSPECIFIED {
		http.Error(w, fmt.Sprintf("chunk %s: body is not zstd, xz or gzip; a .cacnk is compressed", id), http.StatusBadRequest)
		return
	}
	var ack *chunkbridgev1.UploadChunksResponse
	for _, alg := range []chunkbridgev1.DigestAlgorithm{chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256} {
		ack, err = h.upload(r, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: alg, Encoding: enc, Data: body})
		if err != nil {
			h.fail(w, err)
			return
		}
		if codes.Code(ack.GetCode()) != codes.DataLoss {
			break
		}
	}
	if code := codes.Code(ack.GetCode()); code != codes.OK {
		msg := ack.GetMessage()
		if code == codes.DataLoss {
			msg = fmt.Sprintf("chunk %s: the data hashes to this id with neither SHA-512/256 nor SHA-256", id)
		}
		h.fail(w, status.Error(code, msg))
		return
	}
	if ack.GetCreated() {
		w.WriteHeader(http.StatusCreated)
	}
}

func (h *HTTPStore) upload(r *http.Request, req *chunkbridgev1.UploadChunksRequest) (*chunkbridgev1.UploadChunksResponse, error) {
	stream, err := h.Chunks.UploadChunks(r.Context())
	if err != nil {
		return nil, err
	}
	if err := stream.Send(req); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	return stream.Recv()
}

func (h *HTTPStore) index(w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodHead:
		resp, err := h.Catalog.StatIndex(r.Context(), &chunkbridgev1.StatIndexRequest{Name: name})
		if err != nil {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(resp.GetIndex().GetSize(), 10))
	case http.MethodGet:
		stream, err := h.Catalog.GetIndex(r.Context(), &chunkbridgev1.GetIndexRequest{Name: name})
		if err != nil {
			h.fail(w, err)
			return
		}
		// The first message tells whether the index exists before any
		// status line is written.
		first, err := stream.Recv()
		if err != nil && !errors.Is(err, io.EOF) {
			h.fail(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		for resp := first; resp != nil; {
			if _, err := w.Write(resp.GetData()); err != nil {
				return
			}
			resp, err = stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) && h.Log != nil {
					h.Log.Warn("index download broken off", "index", name, "err", err)
				}
				return
			}
		}
	case http.MethodPut:
		h.putIndex(w, r, name)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// putIndex streams the body to the catalog, which publishes the index only
// when the body is complete, valid, and every chunk is stored.
func (h *HTTPStore) putIndex(w http.ResponseWriter, r *http.Request, name string) {
	stream, err := h.Catalog.PutIndex(r.Context())
	if err == nil {
		err = stream.Send(&chunkbridgev1.PutIndexRequest{Name: name})
	}
	buf := make([]byte, 1<<20)
	for err == nil {
		n, rerr := io.ReadFull(r.Body, buf)
		if n > 0 {
			err = stream.Send(&chunkbridgev1.PutIndexRequest{Data: bytes.Clone(buf[:n])})
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			http.Error(w, fmt.Sprintf("index %s: body: %v", name, rerr), http.StatusBadRequest)
			return
		}
	}
	var resp *chunkbridgev1.PutIndexResponse
	if err == nil || errors.Is(err, io.EOF) {
		resp, err = stream.CloseAndRecv()
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "{\"name\":%q,\"size\":%d,\"chunkCount\":%d}\n", resp.GetIndex().GetName(), resp.GetIndex().GetSize(), resp.GetIndex().GetChunkCount())
}

// fail writes a gRPC error as the HTTP status grpc-gateway would use, with
// the message as text.
func (h *HTTPStore) fail(w http.ResponseWriter, err error) {
	st := status.Convert(err)
	code := runtime.HTTPStatusFromCode(st.Code())
	if st.Code() == codes.FailedPrecondition {
		code = http.StatusConflict // an index that references missing chunks
	}
	if code >= 500 && h.Log != nil {
		h.Log.Warn("casync HTTP store", "code", st.Code().String(), "err", st.Message())
	}
	http.Error(w, st.Message(), code)
}
