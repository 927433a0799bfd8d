package pbs

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// reader is one reader session: it serves the files of one snapshot, and
// only the chunks of the files it downloaded.
type reader struct {
	srv    *Server
	p      auth.Principal
	snap   snapshot
	sn     *chunkbridgev1.Snapshot // snap as the session's start found it
	log    *slog.Logger
	remote string
	mux    *http.ServeMux

	// held bounds the chunk bytes fetched and not yet written.
	held *session.Budget
	// files serialises downloads of files: an index is read whole and
	// converted, so one at a time per connection.
	files sync.Mutex

	mu sync.Mutex
	// registered holds the chunks of the files downloaded, and whether
	// each is encrypted (which chunk space it is read from).
	registered map[client.ID]bool
}

func (s *Server) newReader(ctx context.Context, p auth.Principal, snap snapshot, remote string) (*reader, error) {
	// The snapshot is looked up once: download takes each index's crypt
	// mode from it, without listing the group again per file.
	sn, err := s.findSnapshot(ctx, snap)
	if err == nil && sn == nil {
		err = fmt.Errorf("%w: snapshot %s", apierr.ErrNotFound, snap.dir())
	}
	if err != nil {
		return nil, err
	}
	rd := &reader{srv: s, p: p, snap: snap, sn: sn, remote: remote, registered: map[client.ID]bool{},
		held: session.NewBudget(session.OrDefault(s.DownloadBytes, defaultDLBytes)),
		log:  s.log().With("remote", remote, "principal", p.Name, "snapshot", snap.dir())}
	m := http.NewServeMux()
	m.HandleFunc("GET /download", rd.download)
	m.HandleFunc("GET /chunk", rd.chunk)
	m.HandleFunc("GET /speedtest", func(w http.ResponseWriter, r *http.Request) { reply(w, nil) })
	rd.mux = m
	return rd, nil
}

func (rd *reader) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := rd.srv.boundBody(w); err != nil {
		rd.fail(w, r, err)
		return
	}
	r.URL.Path = cleanPath(r.URL.Path)
	rd.mux.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), rd.p)))
}

func (rd *reader) fail(w http.ResponseWriter, r *http.Request, err error) {
	rd.log.Info("request refused", "call", r.Method+" "+r.URL.Path, "err", err)
	replyErr(w, err)
}

func (rd *reader) download(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		rd.fail(w, r, err)
		return
	}
	name, _ := ps.str("file-name")
	rd.files.Lock()
	defer rd.files.Unlock()
	data, chunks, held, err := rd.srv.readFile(r.Context(), rd.sn, rd.snap.dir(), name)
	encrypted := fileEncrypted(rd.sn, name)
	if err != nil {
		rd.fail(w, r, err)
		return
	}
	defer held.release() // once data is written
	rd.mu.Lock()
	if len(rd.registered)+len(chunks) > session.OrDefault(rd.srv.MaxChunks, defaultMaxChunks) {
		rd.mu.Unlock()
		rd.fail(w, r, fmt.Errorf("%w: this session has registered too many chunks", apierr.ErrExhausted))
		return
	}
	for id := range chunks {
		rd.registered[id] = encrypted
	}
	rd.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(data)
}

// chunk serves a chunk of a downloaded file as a DataBlob: a stored zstd
// frame goes out as it is, wrapped.
func (rd *reader) chunk(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		rd.fail(w, r, err)
		return
	}
	hexd, _ := ps.str("digest")
	id, err := client.ParseID(hexd)
	if err != nil {
		rd.fail(w, r, fmt.Errorf("%w: digest %q", apierr.ErrInvalid, hexd))
		return
	}
	rd.mu.Lock()
	encrypted, ok := rd.registered[id]
	rd.mu.Unlock()
	if !ok {
		rd.fail(w, r, fmt.Errorf("%w: chunk %s is in no file downloaded in this session", apierr.ErrNotFound, id))
		return
	}
	// The largest chunk is held before the fetch; the rest of it goes
	// back once the chunk's size is known, the chunk's own share once
	// it is written.
	const most = datablob.MaxEncodedChunkSize
	if err := rd.held.Acquire(r.Context(), most); err != nil {
		rd.fail(w, r, err)
		return
	}
	held := int64(most)
	defer func() { rd.held.Release(held) }()
	dl := rd.srv.Chunks.Download(r.Context(), []client.ID{id}, client.DownloadOptions{Encrypted: encrypted})
	defer dl.Close()
	c, err := dl.Next()
	if err == nil {
		err = c.Err
	}
	if err != nil {
		rd.fail(w, r, fmt.Errorf("chunk %s: %w", id, err))
		return
	}
	var blob []byte
	switch c.Encoding {
	case chunkbridgev1.Encoding_ENCODING_DATABLOB:
		blob = c.Data // an encrypted chunk, as the client sent it
	case chunkbridgev1.Encoding_ENCODING_ZSTD:
		blob, err = datablob.EncodeZstd(c.Data)
	case chunkbridgev1.Encoding_ENCODING_RAW:
		blob, err = datablob.EncodeRaw(c.Data)
	default:
		// Anything else is asked for again, decoded.
		dl2 := rd.srv.Chunks.Download(r.Context(), []client.ID{id}, client.DownloadOptions{Raw: true})
		defer dl2.Close()
		if c, err = dl2.Next(); err == nil && c.Err == nil {
			blob, err = datablob.EncodeRaw(c.Data)
		} else if err == nil {
			err = c.Err
		}
	}
	if err != nil {
		rd.fail(w, r, fmt.Errorf("chunk %s: %w", id, err))
		return
	}
	if n := int64(len(blob)); n < held {
		rd.held.Release(held - n)
		held = n
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(blob)
}
