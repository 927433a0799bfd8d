package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// pmxBackup runs `chunkbridge pmx backup`.
func pmxBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx backup", stdout)
	var cf pmxConnFlags
	cf.register(fs)
	typ := fs.String("type", "", "backup type: vm, ct or host (required)")
	id := fs.String("id", "", "backup id, e.g. web-01 or 100: [A-Za-z0-9][A-Za-z0-9_.-]* (required)")
	name := fs.String("name", "", `file name in the snapshot, without .fidx/.didx (default: the input's base name, or "stdin" for -)`)
	fixed := fs.Bool("fixed", false, "cut the input in equal blocks (a disk image: .fidx) instead of content-defined chunks (.didx)")
	chunkSize := sizeFlag(pmxclient.DefaultFixedChunkSize)
	fs.Var(&chunkSize, "chunk-size", "block size with --fixed, e.g. 4M or 65536")
	at := fs.String("time", "", "snapshot time, RFC 3339 (default: now); e.g. to import an older backup")
	asJSON := fs.Bool("json", false, "print the summary as JSON: path, base, chunk and byte counts")
	allowEmpty := fs.Bool("allow-empty", false, "store an empty input as an empty snapshot file (refused otherwise: an empty input is usually a mistake upstream)")
	pos, err := parsePMXFlags(fs, args, stderr, 1, "one input: FILE, or - for stdin")
	if err != nil {
		return err
	}
	bt, err := pmxproto.ParseBackupType(*typ)
	if err != nil {
		return usagef("pmx backup: --type %q: want vm, ct or host", *typ)
	}
	if *id == "" {
		return usagef("pmx backup: --id is required, e.g. --id web-01")
	}
	if *name == "" {
		*name = "stdin"
		if pos[0] != "-" {
			*name = filepath.Base(pos[0])
		}
	}
	var when time.Time
	if *at != "" {
		if when, err = time.Parse(time.RFC3339, *at); err != nil {
			return usagef("pmx backup: --time %q: want RFC 3339, e.g. 2026-11-25T10:00:00Z", *at)
		}
	}
	if !*fixed && isFlagSet(fs, "chunk-size") {
		return usagef("pmx backup: --chunk-size applies to --fixed backups only; dynamic backups use casync's 16/64/256 KiB chunker")
	}
	in, size, closeIn, err := openBackupInput(pos[0])
	if err != nil {
		return fmt.Errorf("pmx backup: %w", err)
	}
	defer closeIn()
	if size == 0 && !*allowEmpty {
		return fmt.Errorf("pmx backup: %s is empty; nothing stored (add --allow-empty to store an empty snapshot file)", describeEmpty(pos[0]))
	}
	if *fixed && size < 0 {
		return usagef("pmx backup: --fixed needs the input's size, which goes into the index, and %s has none: "+
			"back up a file or block device, or leave out --fixed for a dynamic backup", describeInput(pos[0]))
	}

	if size < 0 && !*allowEmpty {
		// A stream's emptiness shows only when it is read: wait for its
		// first byte before connecting, and put it back.
		if in, err = nonEmpty(in); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("pmx backup: %s is empty; nothing stored (add --allow-empty to store an empty snapshot file)", describeEmpty(pos[0]))
			}
			return fmt.Errorf("pmx backup: reading %s: %w", describeEmpty(pos[0]), err)
		}
	}
	c, err := cf.dial(ctx)
	if err != nil {
		return fmt.Errorf("pmx backup: %w", err)
	}
	defer c.Close()
	bar := newProgressLine(stderr)
	sum, err := pmxclient.Backup(ctx, c, pmxclient.BackupOptions{
		Type: bt, ID: *id, Name: *name, Fixed: *fixed, ChunkSize: int(chunkSize),
		Input: in, Size: size, Time: when,
		Progress: func(s pmxclient.Stats) { bar.show(s.String()) },
	})
	bar.clear()
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, backupJSON{
			Path: sum.Path, Base: sum.Base, BaseChunks: sum.BaseChunks, Bytes: sum.BytesRead,
			Chunks: sum.Chunks, UploadedChunks: sum.NewChunks, UploadedBytes: sum.BytesUploaded,
			AlreadyStoredChunks: sum.ReusedChunks, Seconds: sum.Elapsed.Seconds(),
		})
	}
	fmt.Fprintln(stdout, sum.String())
	return nil
}

// backupJSON is what `pmx backup --json` prints.
type backupJSON struct {
	Path                string  `json:"path"`
	Base                string  `json:"base,omitempty"` // the hash list the backup was incremental to
	BaseChunks          int     `json:"base_chunks"`
	Bytes               int64   `json:"bytes"`
	Chunks              int64   `json:"chunks"`
	UploadedChunks      int64   `json:"uploaded_chunks"`
	UploadedBytes       int64   `json:"uploaded_bytes"`
	AlreadyStoredChunks int64   `json:"already_stored_chunks"`
	Seconds             float64 `json:"seconds"`
}

// restoreJSON is what `pmx restore --json` prints.
type restoreJSON struct {
	Path    string  `json:"path"`
	Out     string  `json:"out"`
	Bytes   int64   `json:"bytes"`
	Chunks  int     `json:"chunks"`
	Seconds float64 `json:"seconds"`
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// openBackupInput opens FILE or stdin ("-") and finds its size: a regular
// file's length, a block device's capacity, or -1 for a stream.
func openBackupInput(name string) (io.Reader, int64, func(), error) {
	if name == "-" {
		return os.Stdin, -1, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	closeF := func() { f.Close() }
	mode := st.Mode()
	switch {
	case mode.IsRegular():
		return f, st.Size(), closeF, nil
	case mode.IsDir():
		f.Close()
		return nil, 0, nil, fmt.Errorf("%s is a directory; back up an archive of it, e.g. tar -cf - %s | chunkbridge pmx backup ... -", name, name)
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0: // block device
		size, err := f.Seek(0, io.SeekEnd)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			f.Close()
			return nil, 0, nil, fmt.Errorf("finding the size of block device %s: %w", name, err)
		}
		return f, size, closeF, nil
	}
	return f, -1, closeF, nil // a pipe, a character device: a stream
}

// nonEmpty reads r's first byte and returns a reader of all of r, or
// io.EOF if r is empty.
func nonEmpty(r io.Reader) (io.Reader, error) {
	var first [1]byte
	for {
		n, err := r.Read(first[:])
		if n > 0 {
			return io.MultiReader(bytes.NewReader(first[:]), r), nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func describeEmpty(name string) string {
	if name == "-" {
		return "stdin"
	}
	return name
}

func describeInput(name string) string {
	if name == "-" {
		return "stdin"
	}
	return name + " (not a regular file or block device)"
}

// isFlagSet reports whether the flag was given on the command line or by
// its environment variable.
func isFlagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
