package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// grpcTransport reaches the chunk service through its gRPC API; ids
// become hex only here, at the edge.
type grpcTransport struct {
	c chunkbridgev1.ChunkServiceClient
	// reads carries openStored on ReadChunks streams.
	reads *muxReads
}

func hexIDs(ids []ID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

func (t grpcTransport) findMissing(ctx context.Context, ids []ID, encrypted bool) ([]ID, error) {
	resp, err := t.c.FindMissingChunks(ctx, &chunkbridgev1.FindMissingChunksRequest{Ids: hexIDs(ids), Encrypted: encrypted})
	if err != nil {
		return nil, err
	}
	missing := make([]ID, len(resp.GetMissing()))
	for i, s := range resp.GetMissing() {
		if missing[i], err = ParseID(s); err != nil {
			return nil, fmt.Errorf("the chunk service answered a malformed id: %w", err)
		}
	}
	return missing, nil
}

func (t grpcTransport) stat(ctx context.Context, id ID) (*chunkbridgev1.ChunkInfo, error) {
	resp, err := t.c.StatChunk(ctx, &chunkbridgev1.StatChunkRequest{Id: id.String()})
	if err != nil {
		return nil, err
	}
	return resp.GetChunk(), nil
}

type grpcUpload struct {
	s chunkbridgev1.ChunkService_UploadChunksClient
}

func (t grpcTransport) openUpload(ctx context.Context, _ int) (upStream, error) {
	s, err := t.c.UploadChunks(ctx)
	if err != nil {
		return nil, err
	}
	return grpcUpload{s: s}, nil
}

// send marshals before it returns, so the caller's buffer is free after
// it; the Uploader still holds it until the acknowledgement, as the local
// transport needs.
func (g grpcUpload) send(u *Upload) error {
	return g.s.Send(&chunkbridgev1.UploadChunksRequest{Id: u.ID.String(), Algorithm: u.Algorithm, Encoding: u.Encoding, Data: u.Data, Encrypted: u.Encrypted, Size: u.Size})
}

func (g grpcUpload) recv() (bool, error, error) {
	ack, err := g.s.Recv()
	if err != nil {
		return false, nil, err
	}
	return ack.GetCreated(), apierr.FromCode(ack.GetCode(), ack.GetMessage()), nil
}

func (g grpcUpload) closeSend() error { return g.s.CloseSend() }

type grpcDownload struct {
	s chunkbridgev1.ChunkService_DownloadChunksClient
}

func (t grpcTransport) openDownload(ctx context.Context, ids []ID, opts DownloadOptions) (downStream, error) {
	enc := chunkbridgev1.Encoding_ENCODING_ZSTD
	if opts.Raw {
		enc = chunkbridgev1.Encoding_ENCODING_RAW
	}
	s, err := t.c.DownloadChunks(ctx, &chunkbridgev1.DownloadChunksRequest{Ids: hexIDs(ids), Encoding: enc, Encrypted: opts.Encrypted})
	if err != nil {
		return nil, err
	}
	return grpcDownload{s: s}, nil
}

func (g grpcDownload) recv() (Chunk, error) {
	resp, err := g.s.Recv()
	if err != nil {
		return Chunk{}, err
	}
	id, err := ParseID(resp.GetId())
	if err != nil {
		return Chunk{}, fmt.Errorf("the chunk service answered a malformed id: %w", err)
	}
	return Chunk{
		ID: id, Algorithm: resp.GetAlgorithm(), Size: resp.GetSize(), Encoding: resp.GetEncoding(), Data: resp.GetData(),
		Err: apierr.FromCode(resp.GetCode(), resp.GetMessage()),
	}, nil
}

// openStored is a tagged read on a shared ReadChunks stream, or where the
// service predates it a one-chunk download as stored.
func (t grpcTransport) openStored(ctx context.Context, id ID) (io.ReadCloser, int64, error) {
	if t.reads != nil {
		data, free, err := t.reads.read(ctx, id)
		if !errors.Is(err, errReadsUnsupported) {
			if err != nil {
				return nil, 0, err
			}
			return newStoredBytes(data, free), int64(len(data)), nil
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := t.openDownload(ctx, []ID{id}, DownloadOptions{})
	if err != nil {
		return nil, 0, err
	}
	c, err := s.recv()
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("the chunk service ended the download of chunk %s without it", id)
	}
	if err == nil && c.ID != id {
		err = fmt.Errorf("the chunk service answered chunk %s for %s", c.ID, id)
	}
	if err == nil {
		err = c.Err
	}
	if err != nil {
		return nil, 0, err
	}
	return newStoredBytes(c.Data, nil), int64(len(c.Data)), nil
}

// StoredBytes is OpenStored's reader for a chunk that came in memory (over
// gRPC): a caller may write Bytes in one go instead of copying through a
// buffer. The bytes may sit in a pooled buffer that Close gives back, so
// neither they nor the reader may be used after Close.
type StoredBytes struct {
	*bytes.Reader
	data []byte
	free func()
}

func newStoredBytes(data []byte, free func()) *StoredBytes {
	return &StoredBytes{Reader: bytes.NewReader(data), data: data, free: free}
}

// Bytes is the whole chunk as stored, until Close.
func (s *StoredBytes) Bytes() []byte { return s.data }

// Close gives the bytes' buffer back; they must not be used after.
func (s *StoredBytes) Close() error {
	if s.free != nil {
		s.free()
		s.free = nil
	}
	s.data = nil
	s.Reader.Reset(nil)
	return nil
}
