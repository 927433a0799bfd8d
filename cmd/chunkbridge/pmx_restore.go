package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// pmxRestore runs `chunkbridge pmx restore`.
func pmxRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx restore", stdout)
	var cf pmxConnFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print the summary as JSON: path, out, bytes, chunks, seconds (on stderr when OUT is -)")
	force := fs.Bool("force", false, "replace OUT if it exists (a regular file; devices are always written in place)")
	pos, err := parsePMXFlags(fs, args, stderr, 2, "SNAPSHOT_PATH and OUT (- for stdout)")
	if err != nil {
		return err
	}
	path, outName := pos[0], pos[1]
	// Checked before connecting, and again (atomically) at the rename: a
	// restore must not silently replace a file the user still needs.
	if outName != "-" && !*force {
		if st, err := os.Stat(outName); err == nil && st.Mode().IsRegular() {
			return fmt.Errorf("pmx restore: %s exists; add --force to replace it", outName)
		}
	}
	c, err := cf.dial(ctx)
	if err != nil {
		return fmt.Errorf("pmx restore: %w", err)
	}
	defer c.Close()

	bar := newProgressLine(stderr)
	progress := func(s pmxclient.RestoreStats) { bar.show(s.String()) }
	if outName == "-" {
		w := bufio.NewWriterSize(stdout, 1<<20)
		sum, err := pmxclient.Restore(ctx, c, path, w, progress)
		bar.clear()
		if err != nil {
			return withListHint(err)
		}
		if err := w.Flush(); err != nil {
			return fmt.Errorf("pmx restore: writing to stdout: %w", err)
		}
		if *asJSON {
			return writeJSON(stderr, restoreSummaryJSON(sum, "-")) // stdout carries the data
		}
		fmt.Fprintln(stderr, sum.String()) // stdout carries the data
		return nil
	}
	out, err := createOutput(outName, *force)
	if err != nil {
		return fmt.Errorf("pmx restore: %w", err)
	}
	sum, err := pmxclient.Restore(ctx, c, path, out, progress)
	bar.clear()
	if err != nil {
		out.abort()
		return withListHint(err)
	}
	if err := out.commit(); err != nil {
		return fmt.Errorf("pmx restore: %w", err)
	}
	if *asJSON {
		return writeJSON(stdout, restoreSummaryJSON(sum, outName))
	}
	fmt.Fprintln(stdout, sum.String()+" to "+outName)
	return nil
}

func restoreSummaryJSON(sum *pmxclient.RestoreSummary, out string) restoreJSON {
	return restoreJSON{Path: sum.Path, Out: out, Bytes: sum.BytesWritten, Chunks: sum.ChunksDone, Seconds: sum.Elapsed.Seconds()}
}

// output is where a restore writes: a temporary file next to the target,
// renamed over it only when complete, so a failed restore leaves no
// partial file. An existing device or other non-regular target is written
// in place.
type output struct {
	*os.File
	tmp, final string // tmp == "" when writing in place
	replace    bool   // an existing regular file may be replaced
}

func createOutput(name string, replace bool) (*output, error) {
	st, err := os.Stat(name)
	switch {
	case err == nil && st.IsDir():
		return nil, fmt.Errorf("%s is a directory; name the file to restore into", name)
	case err == nil && !st.Mode().IsRegular():
		f, err := os.OpenFile(name, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		return &output{File: f, final: name}, nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	mode := os.FileMode(0o644)
	if err == nil {
		mode = st.Mode().Perm() // keep an existing file's permissions
	}
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".restore-*")
	if err != nil {
		return nil, fmt.Errorf("creating a temporary file next to %s: %w", name, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &output{File: f, tmp: f.Name(), final: name, replace: replace}, nil
}

// commit makes the restored content durable and visible under its name.
func (o *output) commit() error {
	err := o.Sync()
	if cerr := o.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil || o.tmp == "":
	case o.replace:
		err = os.Rename(o.tmp, o.final)
	default:
		// A link fails if the name appeared during the restore, where a
		// rename would replace it.
		if err = os.Link(o.tmp, o.final); err == nil {
			err = os.Remove(o.tmp)
		} else if errors.Is(err, os.ErrExist) {
			err = fmt.Errorf("%s appeared during the restore; add --force to replace it", o.final)
		} else if _, serr := os.Lstat(o.final); errors.Is(serr, os.ErrNotExist) {
			err = os.Rename(o.tmp, o.final) // a file system without hard links
		}
	}
	if err != nil {
		o.abort()
		return fmt.Errorf("writing %s: %w", o.final, err)
	}
	return nil
}

// abort discards the temporary file.
func (o *output) abort() {
	o.Close()
	if o.tmp != "" {
		os.Remove(o.tmp)
	}
}

// pmxHashes runs `chunkbridge pmx hashes`.
func pmxHashes(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx hashes", stdout)
	var cf pmxConnFlags
	cf.register(fs)
	asJSON := fs.Bool("json", false, `print {"path": …, "digests": […]} instead of one digest per line`)
	pos, err := parsePMXFlags(fs, args, stderr, 1, "SNAPSHOT_PATH")
	if err != nil {
		return err
	}
	c, err := cf.dial(ctx)
	if err != nil {
		return fmt.Errorf("pmx hashes: %w", err)
	}
	defer c.Close()
	ds, err := c.HashList(ctx, pos[0])
	if err != nil {
		return withListHint(err)
	}
	if *asJSON {
		hexes := make([]string, len(ds))
		for i, d := range ds {
			hexes[i] = fmt.Sprint(d)
		}
		return writeJSON(stdout, map[string]any{"path": pos[0], "digests": hexes})
	}
	w := bufio.NewWriter(stdout)
	for _, d := range ds {
		fmt.Fprintln(w, d)
	}
	return w.Flush()
}

// withListHint adds, to a missing snapshot file's error, where to find the
// right path.
func withListHint(err error) error {
	if errors.Is(err, pmxclient.ErrNotFound) {
		return fmt.Errorf("%w (see the snapshot files with chunkbridge pmx list)", err)
	}
	return err
}
