package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// pmxRestore runs `chunkbridge pmx restore`: a snapshot file into a file,
// or a snapshot's files into a directory.
func pmxRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx restore", stdout)
	var cf pmxConnFlags
	cf.register(fs)
	var rf restFlags
	rf.register(fs, "lists a snapshot's files when it is restored whole (PMXBCKUP cannot list them)")
	name := fs.String("name", "", "with a SNAPSHOT (<type>/<id>/<time>), the one file to restore into OUT, as pmx list shows it (root.pxar.didx) or without .didx/.fidx")
	asJSON := fs.Bool("json", false, "print the summary as JSON: path, out, bytes, chunks, seconds (on stderr when OUT is -; a list for a whole snapshot)")
	force := fs.Bool("force", false, "replace OUT (or the files in DIR) if it exists (a regular file; devices are always written in place)")
	pos, err := parsePMXFlags(fs, args, stderr, 2, "SNAPSHOT_PATH and OUT (- for stdout), or SNAPSHOT and DIR")
	if err != nil {
		return err
	}
	path, outName := strings.Trim(pos[0], "/"), pos[1]
	switch parts := strings.Split(path, "/"); {
	case len(parts) == 4 && *name != "":
		return usagef("pmx restore: %s names a file already; --name goes with a snapshot, <type>/<id>/<time>", pos[0])
	case len(parts) == 3 && *name == "":
		return pmxRestoreSnapshot(ctx, &cf, &rf, path, outName, *force, *asJSON, stdout, stderr)
	case len(parts) == 3:
		path += "/" + *name
	case len(parts) != 4:
		return usagef("pmx restore: %q: want a snapshot file <type>/<id>/<time>/<file>, or a snapshot <type>/<id>/<time> (the time may be latest)", pos[0])
	}
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
	if path, err = fileExtension(ctx, c, path); err != nil {
		return withListHint(err)
	}

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
	sum, err := restoreInto(ctx, c, path, outName, *force, progress)
	bar.clear()
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(stdout, restoreSummaryJSON(sum, outName))
	}
	fmt.Fprintln(stdout, sum.String()+" to "+outName)
	return nil
}

// fileExtension completes a snapshot file path given without .didx or
// .fidx (as --name may be) with the one the snapshot has.
func fileExtension(ctx context.Context, c *pmxclient.Client, path string) (string, error) {
	if strings.HasSuffix(path, ".didx") || strings.HasSuffix(path, ".fidx") {
		return path, nil
	}
	// PMXBCKUP cannot stat a file: its hash list is the cheapest probe.
	for _, ext := range []string{".didx", ".fidx"} {
		_, err := c.HashList(ctx, path+ext)
		if err == nil {
			return path + ext, nil
		}
		if !errors.Is(err, pmxclient.ErrNotFound) {
			return "", fmt.Errorf("pmx restore: %w", err)
		}
	}
	return "", fmt.Errorf("pmx restore: the snapshot has neither %s.didx nor %s.fidx: %w", path, path, pmxclient.ErrNotFound)
}

// restoreInto restores a snapshot file into the file out: complete or
// not at all.
func restoreInto(ctx context.Context, c *pmxclient.Client, path, out string, force bool, progress func(pmxclient.RestoreStats)) (*pmxclient.RestoreSummary, error) {
	o, err := createOutput(out, force)
	if err != nil {
		return nil, fmt.Errorf("pmx restore: %w", err)
	}
	sum, err := pmxclient.Restore(ctx, c, path, o, progress)
	if err != nil {
		o.abort()
		return nil, withListHint(err)
	}
	if err := o.commit(); err != nil {
		return nil, fmt.Errorf("pmx restore: %w", err)
	}
	return sum, nil
}

// pmxRestoreSnapshot restores every file of a snapshot into dir, each as
// its name without .didx/.fidx (root.pxar.didx as dir/root.pxar), over
// one connection. PMXBCKUP cannot list a snapshot's files: the REST API
// (--api) does.
func pmxRestoreSnapshot(ctx context.Context, cf *pmxConnFlags, rf *restFlags, snap, dir string, force, asJSON bool, stdout, stderr io.Writer) error {
	if dir == "-" {
		return usagef("pmx restore: a whole snapshot goes into a directory, not stdout; restore one file to - with --name FILE")
	}
	if rf.api == "" {
		return usagef("pmx restore: restoring all of %s needs its list of files, which PMXBCKUP cannot give: name the REST API with --api http[s]://HOST:PORT "+
			"(or CHUNKBRIDGE_API, or api: in the config profile), or restore one file with --name FILE", snap)
	}
	base, bearer, hc, err := rf.client(cf, "pmx restore")
	if err != nil {
		return err
	}
	parts := strings.Split(snap, "/")
	resp, err := listSnapshots(ctx, hc, base, bearer, "", 0, parts[0], parts[1])
	if err != nil {
		return fmt.Errorf("pmx restore: listing the files of %s: %w", snap, err)
	}
	var files []*chunkbridgev1.SnapshotFileInfo
	found := false
	for _, s := range resp.GetSnapshots() { // newest first
		if t := s.GetTime().AsTime().UTC().Format(time.RFC3339); t == parts[2] || parts[2] == "latest" {
			snap, found = parts[0]+"/"+parts[1]+"/"+t, true
			for _, f := range s.GetFiles() {
				// Only indexes go through PMXBCKUP; a snapshot written
				// by another protocol may hold other files too.
				if n := f.GetName(); strings.HasSuffix(n, ".didx") || strings.HasSuffix(n, ".fidx") {
					files = append(files, f)
				} else {
					fmt.Fprintf(stderr, "pmx restore: skipped %s/%s: PMXBCKUP restores .didx and .fidx files only\n", snap, n)
				}
			}
			break
		}
	}
	if !found {
		return fmt.Errorf("pmx restore: snapshot %s: %w (see the snapshots with chunkbridge pmx list)", snap, pmxclient.ErrNotFound)
	}
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return fmt.Errorf("pmx restore: %s is not a directory; a whole snapshot is restored into one (or restore one file with --name FILE)", dir)
	}
	outs := make([]string, len(files))
	seen := map[string]string{}
	for i, f := range files {
		// The name comes from the server: one that is not a plain file
		// name (../x.didx, a/b.didx) would write outside dir.
		base := strings.TrimSuffix(strings.TrimSuffix(f.GetName(), ".didx"), ".fidx")
		if !filepath.IsLocal(base) || base == "." || strings.ContainsAny(base, `/\`) {
			return fmt.Errorf("pmx restore: the REST API lists a file %q in %s, which is not a plain file name: nothing restored", f.GetName(), snap)
		}
		if other, ok := seen[base]; ok {
			// x.didx and x.fidx would both be DIR/x: one would replace the other.
			return fmt.Errorf("pmx restore: %s has both %s and %s, which would both be %s: restore each with --name FILE into a file of its own", snap, other, f.GetName(), filepath.Join(dir, base))
		}
		seen[base] = f.GetName()
		outs[i] = filepath.Join(dir, base)
		if !force {
			if st, err := os.Stat(outs[i]); err == nil && st.Mode().IsRegular() {
				return fmt.Errorf("pmx restore: %s exists; add --force to replace it", outs[i])
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("pmx restore: %w", err)
	}
	c, err := cf.dial(ctx)
	if err != nil {
		return fmt.Errorf("pmx restore: %w", err)
	}
	defer c.Close()
	bar := newProgressLine(stderr)
	var sums []restoreJSON
	for i, f := range files {
		label := fmt.Sprintf("%s (%d/%d): ", f.GetName(), i+1, len(files))
		sum, err := restoreInto(ctx, c, f.GetPath(), outs[i], force, func(s pmxclient.RestoreStats) { bar.show(label + s.String()) })
		bar.clear()
		if err != nil {
			return fmt.Errorf("%w (%d of the %d files of %s restored)", err, i, len(files), snap)
		}
		sums = append(sums, restoreSummaryJSON(sum, outs[i]))
		if !asJSON {
			fmt.Fprintln(stdout, sum.String()+" to "+outs[i])
		}
	}
	if asJSON {
		return writeJSON(stdout, map[string]any{"snapshot": snap, "files": sums})
	}
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
