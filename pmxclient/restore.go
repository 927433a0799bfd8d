package pmxclient

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Restore writes the content of a snapshot file to out: it reads the file's
// digests with HashList, then downloads the chunks in pipelined batches
// (see Download), verifies each one's SHA-256, and writes them in order.
// path is store-relative as BackupCreated returned it; "latest" may stand
// for the time. progress, if set, is called at most every
// ProgressInterval and once at the end.
//
// On error out holds a prefix of the content; the caller discards it.
func Restore(ctx context.Context, c *Client, path string, out io.Writer, progress func(RestoreStats)) (*RestoreSummary, error) {
	start := time.Now()
	digests, err := c.HashList(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("pmx: restore of %s: %w", path, err)
	}
	st := RestoreStats{Chunks: len(digests)}
	var last time.Time
	report := func(final bool) {
		if progress == nil {
			return
		}
		now := time.Now()
		if final || now.Sub(last) >= ProgressInterval {
			last = now
			st.Elapsed = now.Sub(start)
			progress(st)
		}
	}
	err = c.Download(ctx, digests, func(i int, data []byte) error {
		if _, err := out.Write(data); err != nil {
			return fmt.Errorf("writing chunk %d at offset %d: %w", i, st.BytesWritten, err)
		}
		st.ChunksDone++
		st.BytesWritten += int64(len(data))
		report(false)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pmx: restore of %s: %w", path, err)
	}
	report(true)
	st.Elapsed = time.Since(start)
	return &RestoreSummary{Path: path, RestoreStats: st}, nil
}
