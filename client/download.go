package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// DownloadOptions shape a download.
type DownloadOptions struct {
	// Raw asks for the uncompressed, re-verified data; otherwise chunks
	// come as stored (a zstd frame), without decoding.
	Raw bool
	// Encrypted reads from the encrypted space: chunks come as stored
	// (ENCODING_DATABLOB), their CRC checked, whatever Raw says.
	Encrypted bool
}

// Download yields chunks in the order of the ids asked for. The service
// reads a bounded window ahead; gRPC's flow control, or in this process
// the local transport's budget, holds it back while the caller is slow.
type Download struct {
	ctx    context.Context
	cancel context.CancelFunc
	t      transport
	ids    []ID
	opts   DownloadOptions
	next   int // index of the first id not yet asked of the service
	s      downStream
	err    error
}

// Download starts fetching ids; Next yields them.
func (c *Chunks) Download(ctx context.Context, ids []ID, opts DownloadOptions) *Download {
	ctx, cancel := context.WithCancel(ctx)
	return &Download{ctx: ctx, cancel: cancel, t: c.t, ids: ids, opts: opts}
}

// Next returns the next chunk; a chunk that could not be read has Err set
// and the download goes on. The error is the download's own (the service
// unreachable, ctx ended), after which it is over; io.EOF after the last.
// Data is the caller's to keep.
func (d *Download) Next() (Chunk, error) {
	if d.err != nil {
		return Chunk{}, d.err
	}
	for {
		if d.s == nil {
			if d.next >= len(d.ids) {
				d.err = io.EOF
				d.cancel()
				return Chunk{}, io.EOF
			}
			batch := d.ids[d.next:min(len(d.ids), d.next+maxIDsPerCall)]
			s, err := d.t.openDownload(d.ctx, batch, d.opts)
			if err != nil {
				return Chunk{}, d.fail(err)
			}
			d.s, d.next = s, d.next+len(batch)
		}
		c, err := d.s.recv()
		if errors.Is(err, io.EOF) {
			d.s = nil
			continue
		}
		if err != nil {
			return Chunk{}, d.fail(err)
		}
		if c.Err != nil {
			c.Err = apierr.FromStatus(c.Err)
		}
		return c, nil
	}
}

func (d *Download) fail(err error) error {
	d.err = fmt.Errorf("download chunks: %w", apierr.FromStatus(err))
	d.cancel()
	return d.err
}

// Close ends the download early and releases what was read ahead.
func (d *Download) Close() {
	if d.err == nil {
		d.err = errors.New("download closed")
	}
	d.cancel()
}
