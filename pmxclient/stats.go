package pmxclient

import (
	"fmt"
	"math"
	"time"
)

// Stats is a backup's progress.
type Stats struct {
	// Total is the input's size, or -1 if unknown (a dynamic backup of a
	// stream).
	Total int64
	// BytesRead is the input chunked and indexed so far.
	BytesRead int64
	// Chunks is the number of chunks indexed so far: NewChunks +
	// ReusedChunks.
	Chunks int64
	// NewChunks were uploaded: sent to the server, which may have held
	// some of them already (the protocol does not say). ReusedChunks were
	// not sent because they are known to be stored: in the previous
	// snapshot or uploaded earlier in this run.
	NewChunks, ReusedChunks int64
	// BytesUploaded is the chunk data uploaded.
	BytesUploaded int64
	// Elapsed is the time since the backup started.
	Elapsed time.Duration
}

// DedupRatio returns BytesRead / BytesUploaded: how many bytes of input
// each uploaded byte stands for (the client's saving, not the store's). It is +Inf when nothing was uploaded but
// something read, and 1 for an empty input.
func (s Stats) DedupRatio() float64 {
	switch {
	case s.BytesUploaded > 0:
		return float64(s.BytesRead) / float64(s.BytesUploaded)
	case s.BytesRead > 0:
		return math.Inf(1)
	}
	return 1
}

// Rate returns the bytes read per second.
func (s Stats) Rate() float64 { return rate(s.BytesRead, s.Elapsed) }

// String returns a one-line progress report, e.g.
// "512.0 MiB of 1.0 GiB (50%), 243 MB/s, 8192 chunks: 60 uploaded, 8132 already stored".
func (s Stats) String() string {
	done := FormatSize(s.BytesRead)
	if s.Total > 0 && s.Total >= s.BytesRead {
		pct := 100 * float64(s.BytesRead) / float64(s.Total)
		done = fmt.Sprintf("%s of %s (%.0f%%)", done, FormatSize(s.Total), pct)
	}
	return fmt.Sprintf("%s, %s, %s", done, FormatRate(s.Rate()), s.chunkCounts())
}

// chunkCounts says what was sent and what was not: "uploaded" counts
// chunks sent, never whether the server lacked them.
func (s Stats) chunkCounts() string {
	return fmt.Sprintf("%d chunks: %d uploaded (%s), %d already stored", s.Chunks, s.NewChunks, FormatSize(s.BytesUploaded), s.ReusedChunks)
}

// BackupSummary is what a backup did.
type BackupSummary struct {
	// Path is the snapshot file's store-relative path exactly as the
	// server's BackupCreated named it.
	Path string
	// Base is the hash list the backup was incremental to (the "latest"
	// name it asked for), or "" for a full backup.
	Base string
	// BaseChunks is the number of digests in that hash list.
	BaseChunks int
	Stats
	// sharedKnown is how many chunks earlier files of the run were known
	// to have stored (BackupOptions.Known) when this one started.
	sharedKnown int
}

// String returns the summary line, e.g. "snapshot
// host/web-01/2026-11-25T10:00:00Z/root.pxar.didx: 1.0 GiB in 4.2 s
// (243 MB/s), 16384 chunks: 120 uploaded (7.5 MiB), 16264 already stored".
// A first backup says that it had nothing to compare with: the server
// may have held its chunks already (from casync or another backup) and
// then stored nothing new, which the client cannot see.
func (s *BackupSummary) String() string {
	line := fmt.Sprintf("snapshot %s: %s in %s (%s), %s",
		s.Path, FormatSize(s.BytesRead), formatSeconds(s.Elapsed), FormatRate(s.Rate()), s.chunkCounts())
	switch {
	case s.Base == "" && s.NewChunks > 0 && s.sharedKnown > 0:
		line += " (no earlier snapshot of this file: every distinct chunk the earlier files of this run had not sent was sent; the server keeps one copy of any it already had)"
	case s.Base == "" && s.NewChunks > 0:
		line += " (no earlier snapshot of this file: every distinct chunk was sent; the server keeps one copy of any it already had)"
	}
	return line
}

// RestoreStats is a restore's progress.
type RestoreStats struct {
	// Chunks is the number of chunks in the snapshot file; ChunksDone
	// have been written.
	Chunks, ChunksDone int
	// BytesWritten is the data written so far.
	BytesWritten int64
	// Elapsed is the time since the restore started.
	Elapsed time.Duration
}

// Rate returns the bytes written per second.
func (s RestoreStats) Rate() float64 { return rate(s.BytesWritten, s.Elapsed) }

// String returns a one-line progress report, e.g.
// "512.0 MiB, chunk 8192 of 16384 (50%), 480 MB/s".
func (s RestoreStats) String() string {
	pct := 100.0
	if s.Chunks > 0 {
		pct = 100 * float64(s.ChunksDone) / float64(s.Chunks)
	}
	return fmt.Sprintf("%s, chunk %d of %d (%.0f%%), %s", FormatSize(s.BytesWritten), s.ChunksDone, s.Chunks, pct, FormatRate(s.Rate()))
}

// RestoreSummary is what a restore did.
type RestoreSummary struct {
	// Path is the snapshot file restored.
	Path string
	RestoreStats
}

// String returns the summary line, e.g. "restored
// host/web-01/2026-11-25T10:00:00Z/root.pxar.didx: 1.0 GiB in 2.1 s
// (511 MB/s), 16384 chunks".
func (s *RestoreSummary) String() string {
	return fmt.Sprintf("restored %s: %s in %s (%s), %d chunks",
		s.Path, FormatSize(s.BytesWritten), formatSeconds(s.Elapsed), FormatRate(s.Rate()), s.ChunksDone)
}

// FormatSize formats a byte count in binary units: "512 B", "1.5 KiB",
// "1.0 GiB".
func FormatSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= 1024
		if v < 1024 || unit == "PiB" {
			return fmt.Sprintf("%.1f %s", v, unit)
		}
	}
	panic("unreachable")
}

// FormatRate formats bytes per second in decimal units: "243 MB/s".
func FormatRate(bytesPerSecond float64) string {
	v := bytesPerSecond
	for _, unit := range []string{"B/s", "kB/s", "MB/s", "GB/s"} {
		if v < 1000 || unit == "GB/s" {
			if v < 10 && unit != "B/s" {
				return fmt.Sprintf("%.1f %s", v, unit)
			}
			return fmt.Sprintf("%.0f %s", v, unit)
		}
		v /= 1000
	}
	panic("unreachable")
}

func formatSeconds(d time.Duration) string {
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
