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
	"strings"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// pmxBackup runs `chunkbridge pmx backup`: one or several inputs, all
// into one snapshot over one connection.
func pmxBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx backup", stdout)
	var cf pmxConnFlags
	cf.register(fs)
	typ := fs.String("type", "", "backup type: vm, ct or host (required)")
	id := fs.String("id", "", "backup id, e.g. web-01 or 100: [A-Za-z0-9][A-Za-z0-9_.-]* (required)")
	name := fs.String("name", "", `file name in the snapshot, without .fidx/.didx, of the one input FILE (default: the input's base name, or "stdin" for -); several inputs are named NAME:PATH`)
	fixed := fs.Bool("fixed", false, "cut every input in equal blocks (a disk image: .fidx) instead of content-defined chunks (.didx); a NAME:PATH whose NAME ends in .img is cut so without it")
	chunkSize := sizeFlag(pmxclient.DefaultFixedChunkSize)
	fs.Var(&chunkSize, "chunk-size", "block size of the fixed inputs, e.g. 4M or 65536")
	at := fs.String("time", "", "snapshot time, RFC 3339 (default: now); e.g. to import an older backup")
	add := fs.Bool("add", false, "add the files to the snapshot at --time, which may exist already (a file it has is still refused); without it the snapshot must be new")
	asJSON := fs.Bool("json", false, "print the summary as JSON: path, base, chunk and byte counts (several inputs: the snapshot and a list of files)")
	allowEmpty := fs.Bool("allow-empty", false, "store an empty input as an empty snapshot file (refused otherwise: an empty input is usually a mistake upstream)")
	pos, err := parsePMXFlags(fs, args, stderr, oneOrMore, "an input: FILE, - for stdin, or NAME:PATH, one or more")
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
	inputs, err := backupInputs(pos, *name, *fixed)
	if err != nil {
		return err
	}
	// The files of a snapshot share its time: one is chosen for all.
	when := time.Now().UTC().Truncate(time.Second)
	if *at != "" {
		if when, err = time.Parse(time.RFC3339, *at); err != nil {
			return usagef("pmx backup: --time %q: want RFC 3339, e.g. 2026-11-25T10:00:00Z", *at)
		}
	} else if *add {
		return usagef("pmx backup: --add needs --time: the time of the snapshot to add the files to (see chunkbridge pmx list)")
	}
	anyFixed := false
	for _, in := range inputs {
		anyFixed = anyFixed || in.fixed
	}
	if !anyFixed && isFlagSet(fs, "chunk-size") {
		return usagef("pmx backup: --chunk-size applies to fixed inputs only (--fixed, or a NAME:PATH named *.img); dynamic backups use casync's 16/64/256 KiB chunker")
	}
	for i := range inputs {
		if err := inputs[i].open(*allowEmpty); err != nil {
			return err
		}
		defer inputs[i].close()
	}

	c, err := cf.dial(ctx)
	if err != nil {
		return fmt.Errorf("pmx backup: %w", err)
	}
	defer c.Close()
	bar := newProgressLine(stderr)
	start := time.Now()
	var sums []*pmxclient.BackupSummary
	known := map[pmxclient.Digest]struct{}{} // shared: files often share chunks
	for i, in := range inputs {
		label := ""
		if len(inputs) > 1 {
			label = fmt.Sprintf("%s (%d/%d): ", in.name, i+1, len(inputs))
		}
		sum, err := pmxclient.Backup(ctx, c, pmxclient.BackupOptions{
			Type: bt, ID: *id, Name: in.name, Fixed: in.fixed, ChunkSize: int(chunkSize),
			Input: in.r, Size: in.size, Time: when,
			// The first file makes the snapshot (EXCL), the others join it.
			AddToSnapshot: *add || i > 0,
			Known:         known,
			Progress:      func(s pmxclient.Stats) { bar.show(label + s.String()) },
		})
		bar.clear()
		if err != nil {
			if len(sums) > 0 {
				return fmt.Errorf("%s: %w; snapshot %s keeps the %d files written before it: back up the others into it with --add --time %s",
					in.name, err, snapshotOf(sums[0].Path), len(sums), when.Format(time.RFC3339))
			}
			return err
		}
		sums = append(sums, sum)
		if !*asJSON {
			fmt.Fprintln(stdout, sum.String())
		}
	}
	if *asJSON {
		files := make([]backupJSON, len(sums))
		for i, sum := range sums {
			files[i] = backupJSON{
				Path: sum.Path, Base: sum.Base, BaseChunks: sum.BaseChunks, Bytes: sum.BytesRead,
				Chunks: sum.Chunks, UploadedChunks: sum.NewChunks, UploadedBytes: sum.BytesUploaded,
				AlreadyStoredChunks: sum.ReusedChunks, Seconds: sum.Elapsed.Seconds(),
			}
		}
		if len(files) == 1 {
			return writeJSON(stdout, files[0]) // the shape of a one-file backup stays
		}
		return writeJSON(stdout, map[string]any{"snapshot": snapshotOf(sums[0].Path), "files": files, "seconds": time.Since(start).Seconds()})
	}
	if len(sums) > 1 {
		var read, uploaded int64
		for _, sum := range sums {
			read, uploaded = read+sum.BytesRead, uploaded+sum.BytesUploaded
		}
		fmt.Fprintf(stdout, "snapshot %s: %d files, %s read, %s uploaded in %s\n", snapshotOf(sums[0].Path), len(sums),
			pmxclient.FormatSize(read), pmxclient.FormatSize(uploaded), time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// snapshotOf is the snapshot of a snapshot file's path: <type>/<id>/<time>.
func snapshotOf(path string) string { return path[:max(strings.LastIndexByte(path, '/'), 0)] }

// backupInput is one input of pmx backup and its file in the snapshot.
type backupInput struct {
	name  string // in the snapshot, without .fidx/.didx
	path  string // FILE or "-" for stdin
	fixed bool
	r     io.Reader
	size  int64
	close func()
}

// backupInputs reads the positional arguments: FILE or - (named by
// --name, or its base name), or NAME:PATH. A NAME:PATH whose NAME ends in
// .img is a fixed image, as proxmox-backup-client names them; --fixed
// makes every input fixed.
func backupInputs(pos []string, name string, fixed bool) ([]backupInput, error) {
	if name != "" && len(pos) > 1 {
		return nil, usagef("pmx backup: --name names the one input FILE; name several inputs as NAME:PATH, e.g. root.pxar:- disk.img:/dev/sda")
	}
	var inputs []backupInput
	seen := map[string]bool{}
	stdin := false
	for _, a := range pos {
		in := backupInput{path: a, fixed: fixed, name: name}
		// NAME:PATH unless what comes before the first ":" could only be
		// a path: empty or with a "/" (./a:b is a file).
		if i := strings.IndexByte(a, ':'); name == "" && i > 0 && !strings.ContainsRune(a[:i], '/') {
			in.name, in.path = a[:i], a[i+1:]
			in.fixed = fixed || strings.HasSuffix(in.name, ".img")
			if in.path == "" {
				return nil, usagef("pmx backup: %q: want NAME:PATH, with PATH a file or - for stdin", a)
			}
		}
		if in.name == "" {
			in.name = "stdin"
			if in.path != "-" {
				in.name = filepath.Base(in.path)
			}
		}
		if seen[in.name] {
			return nil, usagef("pmx backup: two inputs are named %s: a snapshot has one file of a name; name them NAME:PATH", in.name)
		}
		seen[in.name] = true
		if in.path == "-" {
			if stdin {
				return nil, usagef("pmx backup: stdin (-) can be read once only")
			}
			stdin = true
		}
		inputs = append(inputs, in)
	}
	return inputs, nil
}

// open opens the input and checks it before anything is sent: an empty
// one is refused unless allowEmpty, a fixed one needs a size.
func (in *backupInput) open(allowEmpty bool) error {
	r, size, closeIn, err := openBackupInput(in.path)
	if err != nil {
		return fmt.Errorf("pmx backup: %w", err)
	}
	in.r, in.size, in.close = r, size, closeIn
	if size == 0 && !allowEmpty {
		return fmt.Errorf("pmx backup: %s is empty; nothing stored (add --allow-empty to store an empty snapshot file)", describeEmpty(in.path))
	}
	if in.fixed && size < 0 {
		return usagef("pmx backup: --fixed needs the input's size, which goes into the index, and %s has none (input %s is fixed by --fixed or its .img name): "+
			"back up a file or block device, or make it a dynamic backup", describeInput(in.path), in.name)
	}
	if size < 0 && !allowEmpty {
		// A stream's emptiness shows only when it is read: wait for its
		// first byte before connecting, and put it back.
		if in.r, err = nonEmpty(r); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("pmx backup: %s is empty; nothing stored (add --allow-empty to store an empty snapshot file)", describeEmpty(in.path))
			}
			return fmt.Errorf("pmx backup: reading %s: %w", describeEmpty(in.path), err)
		}
	}
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
