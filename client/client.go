// Package client is the one typed client of chunkbridge's services that
// every gateway and the CLI use (docs/client.md). It speaks in 32-byte ids
// and typed errors, not hex strings and status codes: an error a service
// returns satisfies errors.Is with the sentinels of services/apierr on
// this side too (apierr's table, tested both ways), so callers write
// errors.Is(err, apierr.ErrNotFound) whether the service is in this
// process or behind gRPC.
//
// It has two transports behind one contract, and one conformance suite
// runs on both: gRPC (NewGRPC), and a direct call into a *chunk.Service in
// the same process (NewLocal), which `serve all` uses to skip the
// marshalling, copies and HTTP/2 framing of a loopback hop.
//
// Uploads are ordered and bounded: an Uploader acknowledges chunks in the
// order they were put, with at most a window of chunks and of bytes in
// flight. Downloads are an iterator with a bounded read-ahead in bytes.
package client

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/grpc"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// ID is a chunk id: the 32-byte digest of the chunk's uncompressed data.
type ID = chunk.ID

// ParseID reads 64 hex characters.
func ParseID(s string) (ID, error) { return chunk.ParseID(s) }

// maxIDsPerCall is how many ids one FindMissing or Download call carries
// to the service; longer lists are split.
const maxIDsPerCall = chunk.MaxIDsPerCall

// Upload is one chunk to store. The Uploader owns Data until the chunk's
// acknowledgement has been delivered.
type Upload struct {
	ID        ID
	Algorithm chunkbridgev1.DigestAlgorithm
	Encoding  chunkbridgev1.Encoding
	Data      []byte
	// Encrypted stores Data, an encrypted DataBlob (Encoding
	// ENCODING_DATABLOB), in the encrypted space: as sent, once its CRC is
	// checked, since its id cannot be (docs/pbs.md). Size is then the
	// uncompressed size the client declares.
	Encrypted bool
	Size      int64
}

// Chunk is one downloaded chunk. Err is this chunk's own failure (not
// found, damaged); the download goes on after it.
type Chunk struct {
	ID        ID
	Algorithm chunkbridgev1.DigestAlgorithm
	// Size is the uncompressed size, when known.
	Size     int64
	Encoding chunkbridgev1.Encoding
	Data     []byte
	Err      error
}

// Chunks is the typed client of the chunk service.
type Chunks struct{ t transport }

// transport is what a Chunks needs from a way of reaching the service.
type transport interface {
	findMissing(ctx context.Context, ids []ID, encrypted bool) ([]ID, error)
	stat(ctx context.Context, id ID) (*chunkbridgev1.ChunkInfo, error)
	// openUpload opens a stream that will have at most window chunks
	// unacknowledged.
	openUpload(ctx context.Context, window int) (upStream, error)
	openDownload(ctx context.Context, ids []ID, opts DownloadOptions) (downStream, error)
	// openStored opens one chunk's stored bytes; the error may be a
	// status or a typed error.
	openStored(ctx context.Context, id ID) (io.ReadCloser, int64, error)
}

// upStream is one ordered upload stream: results come back in send order.
type upStream interface {
	send(u *Upload) error
	// recv is the next result: created, the chunk's own error, or the
	// stream's error (after which the stream is over).
	recv() (created bool, itemErr error, err error)
	closeSend() error
}

// downStream yields the chunks of one download in request order.
type downStream interface {
	recv() (Chunk, error)
}

// NewGRPC is a client of the chunk service behind conn.
func NewGRPC(conn grpc.ClientConnInterface) *Chunks {
	c := chunkbridgev1.NewChunkServiceClient(conn)
	return &Chunks{t: grpcTransport{c: c, reads: &muxReads{c: c}}}
}

// NewLocal is a client of svc in this process: the same contract as
// NewGRPC, by direct calls. window bounds the chunks of one stream that
// are verified and stored, or read ahead, at once (default 8), as the gRPC
// server's window does.
func NewLocal(svc *chunk.Service, window int) *Chunks {
	if window <= 0 {
		window = 8
	}
	return &Chunks{t: &localTransport{svc: svc, window: window}}
}

// FindMissing returns the ids of ids that the store lacks, in order.
func (c *Chunks) FindMissing(ctx context.Context, ids []ID) ([]ID, error) {
	return c.findMissing(ctx, ids, false)
}

// FindMissingEncrypted is FindMissing in the encrypted space: an id
// stored only as a plain chunk is missing there.
func (c *Chunks) FindMissingEncrypted(ctx context.Context, ids []ID) ([]ID, error) {
	return c.findMissing(ctx, ids, true)
}

func (c *Chunks) findMissing(ctx context.Context, ids []ID, encrypted bool) ([]ID, error) {
	var missing []ID
	for off := 0; off < len(ids); off += maxIDsPerCall {
		m, err := c.t.findMissing(ctx, ids[off:min(len(ids), off+maxIDsPerCall)], encrypted)
		if err != nil {
			return nil, fmt.Errorf("find missing chunks: %w", apierr.FromStatus(err))
		}
		missing = append(missing, m...)
	}
	return missing, nil
}

// Stat describes a stored chunk; apierr.ErrNotFound if there is none.
func (c *Chunks) Stat(ctx context.Context, id ID) (*chunkbridgev1.ChunkInfo, error) {
	info, err := c.t.stat(ctx, id)
	if err != nil {
		return nil, apierr.FromStatus(err)
	}
	return info, nil
}

// OpenStored opens one chunk as stored (a zstd frame, neither decoded nor
// re-verified: the caller passes it on and its client verifies), for a
// caller that streams it out, and returns its size, which is at most what
// a valid chunk may take; the caller closes the reader. Errors are
// Download's per-chunk ones (apierr.ErrNotFound for a missing chunk). On
// the local transport the reader is the store's own (for the fs store an
// *os.File, so a copy to a socket can use sendfile) and no metadata is
// read; over gRPC it is one tagged request and response on a ReadChunks
// stream that every OpenStored of this client shares (a one-chunk
// Download where the service predates ReadChunks), in memory.
func (c *Chunks) OpenStored(ctx context.Context, id ID) (io.ReadCloser, int64, error) {
	rc, size, err := c.t.openStored(ctx, id)
	if err != nil {
		return nil, 0, apierr.FromStatus(err)
	}
	return rc, size, nil
}
