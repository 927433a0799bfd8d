package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/chunkbridge/chunkbridge/pmxclient"
	"github.com/chunkbridge/chunkbridge/pmxclient/pmxtest"
)

func pmxRun(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, append([]string{"pmx"}, args...), &stdout, &stderr)
	return stdout.String(), stderr.String(), err
}

func writeRandomFile(t *testing.T, name string, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(n)}).Read(data)
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

var summaryLine = regexp.MustCompile(`^snapshot (\S+): \S+ \S+ in [0-9.]+ s \(.*\), (\d+) chunks: (\d+) uploaded \(.*\), (\d+) already stored( \(no earlier snapshot.*\))?\n$`)

func TestPMXBackupRestoreHashes(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "root.pxar")
	data := writeRandomFile(t, in, 1<<20+5)

	// Flags after the file, the server from the environment.
	t.Setenv("CHUNKBRIDGE_SERVER", peer.Addr())
	stdout, stderr, err := pmxRun(t, "backup", in, "--type", "host", "--id", "web-01")
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	m := summaryLine.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("backup printed %q, want the summary line", stdout)
	}
	path := m[1]
	if !regexp.MustCompile(`^host/web-01/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/root\.pxar\.didx$`).MatchString(path) {
		t.Fatalf("snapshot path %q", path)
	}
	if files := peer.Files(); len(files) != 1 || files[0] != path {
		t.Fatalf("peer published %v, summary says %s", files, path)
	}
	if stderr != "" {
		t.Fatalf("backup wrote to stderr (not a terminal): %q", stderr)
	}

	out := filepath.Join(dir, "restored")
	stdout, stderr, err = pmxRun(t, "restore", path, out)
	if err != nil {
		t.Fatalf("restore: %v\n%s", err, stderr)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("restored file differs")
	}
	if !strings.HasPrefix(stdout, "restored "+path+": 1.0 MiB in ") {
		t.Fatalf("restore printed %q", stdout)
	}

	stdout, _, err = pmxRun(t, "hashes", "host/web-01/latest/root.pxar.didx")
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := peer.File(path)
	var want strings.Builder
	for _, d := range ds {
		fmt.Fprintln(&want, d)
	}
	if stdout != want.String() {
		t.Fatalf("hashes printed\n%s\nwant\n%s", stdout, want.String())
	}
}

func TestPMXBackupFixedFromStdinRefused(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	_, _, err := pmxRun(t, "backup", "--server", peer.Addr(), "--type", "vm", "--id", "100", "--fixed", "-")
	if err == nil || !strings.Contains(err.Error(), "--fixed needs the input's size") || !strings.Contains(err.Error(), "stdin") {
		t.Fatalf("fixed backup of stdin: %v", err)
	}
}

func TestPMXBackupFixedFile(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "disk.img")
	data := writeRandomFile(t, in, 3*65536+1)
	stdout, stderr, err := pmxRun(t, "backup", "--server", peer.Addr(), "--type", "vm", "--id", "100",
		"--fixed", "--chunk-size", "64K", "--name", "drive-scsi0.img", in)
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	m := summaryLine.FindStringSubmatch(stdout)
	if m == nil || !strings.HasSuffix(m[1], "/drive-scsi0.img.fidx") || m[2] != "4" {
		t.Fatalf("backup printed %q", stdout)
	}
	ds, _ := peer.File(m[1])
	if len(ds) != 4 || ds[3] != sha256.Sum256(data[3*65536:]) {
		t.Fatalf("index %v", ds)
	}
}

func TestPMXRestoreFailureLeavesNoFile(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.img")
	_, _, err := pmxRun(t, "restore", "--server", peer.Addr(), "vm/1/2026-01-01T00:00:00Z/nope.fidx", out)
	if err == nil || !strings.Contains(err.Error(), "nope.fidx") || !strings.Contains(err.Error(), "pmx list") {
		t.Fatalf("restore of a missing snapshot: %v", err)
	}
	// A chunk that fails verification half-way.
	a, b := []byte("first chunk"), []byte("second chunk")
	ds := peer.Put("vm/1/2026-01-01T00:00:00Z/disk.fidx", a, b)
	peer.SetCorrupt(func(d pmxclient.Digest, data []byte) []byte {
		if d == ds[1] {
			data[0] ^= 1
		}
		return data
	})
	_, _, err = pmxRun(t, "restore", "--server", peer.Addr(), "vm/1/2026-01-01T00:00:00Z/disk.fidx", out)
	if err == nil || !strings.Contains(err.Error(), ds[1].String()) {
		t.Fatalf("restore of a corrupt chunk: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a failed restore left %v", entries)
	}
}

func TestPMXConnectError(t *testing.T) {
	_, _, err := pmxRun(t, "hashes", "--server", "127.0.0.1:1", "x")
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("hashes with nothing listening: %v", err)
	}
}

func TestPMXList(t *testing.T) {
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/snapshots" {
			http.NotFound(w, r)
			return
		}
		query = r.URL.RawQuery
		// As grpc-gateway marshals it: camelCase, int64 as strings.
		fmt.Fprint(w, `{"snapshots":[{"type":"host","backupId":"web-01","time":"2026-11-25T10:00:00Z","files":[
			{"path":"host/web-01/2026-11-25T10:00:00Z/root.pxar.didx","name":"root.pxar.didx","fixed":false,
			 "contentSize":"1073741824","chunkCount":"16384","chunkSize":"0","size":"659456","unknownField":1},
			{"path":"host/web-01/2026-11-25T10:00:00Z/etc.pxar.didx","name":"etc.pxar.didx","fixed":false,
			 "contentSize":"5000","chunkCount":"1","chunkSize":"0","size":"4136"}]},
			{"type":"host","backupId":"web-01","time":"2026-11-24T10:00:00Z","files":[
			{"path":"host/web-01/2026-11-24T10:00:00Z/disk.img.fidx","name":"disk.img.fidx","fixed":true,
			 "contentSize":"4194304","chunkCount":"1","chunkSize":"4194304","size":"4128"}]}]}`)
	}))
	defer srv.Close()
	stdout, _, err := pmxRun(t, "list", "--api", srv.URL, "--type", "host", "--id", "web-01")
	if err != nil {
		t.Fatal(err)
	}
	if query != "backupId=web-01&type=host" {
		t.Fatalf("query %q", query)
	}
	// A snapshot, then each of its files.
	want := "host/web-01/2026-11-25T10:00:00Z: 2 files, 1.0 GiB\n" +
		"  root.pxar.didx  1.0 GiB  16384 chunks  dynamic\n" +
		"  etc.pxar.didx   4.9 KiB  1 chunk       dynamic\n" +
		"host/web-01/2026-11-24T10:00:00Z: 1 file, 4.0 MiB\n" +
		"  disk.img.fidx  4.0 MiB  1 chunk  fixed\n"
	if stdout != want {
		t.Fatalf("list printed\n%q\nwant\n%q", stdout, want)
	}

	// --server names no REST API: list refuses to guess one
	// (TestPMXListNamesItsAPI).
	_, _, err = pmxRun(t, "list", "--server", "127.0.0.1:8007")
	if err == nil || !strings.Contains(err.Error(), "--api") {
		t.Fatalf("list with only --server: %v", err)
	}
	_, _, err = pmxRun(t, "list", "--api", srv.URL+"/nowhere")
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("list from a wrong URL: %v", err)
	}
}

func TestSplitArgs(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("server", "", "")
	fs.Bool("fixed", false, "")
	flags, pos := splitArgs(fs, []string{"a", "--server", "s:1", "--fixed", "-", "--server=t", "-fixed=false", "--", "--b"})
	if fmt.Sprint(flags) != "[--server s:1 --fixed --server=t -fixed=false]" || fmt.Sprint(pos) != "[a - --b]" {
		t.Fatalf("flags %q, positional %q", flags, pos)
	}
}

func TestWithDefaultPort(t *testing.T) {
	for in, want := range map[string]string{"h": "h:8007", "h:1": "h:1", "::1": "[::1]:8007", "[::1]": "[::1]:8007", "[::1]:9": "[::1]:9"} {
		if got := withDefaultPort(in, "8007"); got != want {
			t.Errorf("withDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

// restore replaces an existing file only with --force; without it, it
// fails (exit 1) and leaves the file as it was.
func TestPMXRestoreRefusesToOverwrite(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "root.pxar")
	data := writeRandomFile(t, in, 70000)
	stdout, stderr, err := pmxRun(t, "backup", "--server", peer.Addr(), "--type", "host", "--id", "h", in)
	if err != nil {
		t.Fatalf("backup: %v\n%s", err, stderr)
	}
	path := summaryLine.FindStringSubmatch(stdout)[1]
	out := filepath.Join(dir, "out")
	if err := os.WriteFile(out, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = pmxRun(t, "restore", "--server", peer.Addr(), path, out)
	if err == nil || !strings.Contains(err.Error(), out+" exists; add --force") || exitCode(err, io.Discard) != exitFailed {
		t.Fatalf("restore onto an existing file: %v, want a refusal naming --force, exit 1", err)
	}
	if got, _ := os.ReadFile(out); string(got) != "keep me" {
		t.Fatalf("the existing file was changed to %d bytes", len(got))
	}
	if _, _, err := pmxRun(t, "restore", "--server", peer.Addr(), path, out, "--force"); err != nil {
		t.Fatalf("restore --force: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("restore --force did not replace the file")
	}
	// A name that appears while the restore runs is not replaced either.
	o, err := createOutput(filepath.Join(dir, "late"), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "late"), []byte("late"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := o.commit(); err == nil || !strings.Contains(err.Error(), "appeared during the restore") {
		t.Fatalf("commit over a file that appeared: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "late")); string(got) != "late" {
		t.Fatal("the file that appeared was replaced")
	}
}

// An empty input makes no snapshot unless --allow-empty.
func TestPMXBackupEmptyInput(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	empty := filepath.Join(t.TempDir(), "empty.img")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, fixed := range []string{"--fixed=false", "--fixed"} {
		_, _, err := pmxRun(t, "backup", "--server", peer.Addr(), "--type", "vm", "--id", "1", fixed, empty)
		if err == nil || !strings.Contains(err.Error(), "is empty; nothing stored (add --allow-empty") || exitCode(err, io.Discard) != exitFailed {
			t.Fatalf("backup %s of an empty file: %v, want a refusal naming --allow-empty, exit 1", fixed, err)
		}
	}
	if files := peer.Files(); len(files) != 0 {
		t.Fatalf("refused empty backups published %v", files)
	}
	if _, stderr, err := pmxRun(t, "backup", "--server", peer.Addr(), "--type", "vm", "--id", "1", "--allow-empty", empty); err != nil {
		t.Fatalf("backup --allow-empty: %v\n%s", err, stderr)
	}
	if files := peer.Files(); len(files) != 1 {
		t.Fatalf("backup --allow-empty published %v", files)
	}
}

// A stream is checked for its first byte, which is then backed up too.
func TestNonEmpty(t *testing.T) {
	if _, err := nonEmpty(strings.NewReader("")); err != io.EOF {
		t.Fatalf("empty: %v, want io.EOF", err)
	}
	r, err := nonEmpty(iotest.OneByteReader(strings.NewReader("abc")))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(r); string(got) != "abc" {
		t.Fatalf("read %q", got)
	}
}

// Several inputs of pmx backup: named NAME:PATH, fixed when --fixed or
// named *.img, into one snapshot; mistakes are refused before anything is
// sent.
func TestPMXBackupSeveralInputs(t *testing.T) {
	peer := pmxtest.NewPeer(t)
	t.Setenv("CHUNKBRIDGE_SERVER", peer.Addr())
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b:c")
	writeRandomFile(t, a, 100<<10)
	writeRandomFile(t, b, 3000)
	base := []string{"backup", "--type", "vm", "--id", "9", "--time", "2026-11-25T10:00:00Z"}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--name", "x", a, b}, "--name names the one input"},
		{[]string{"x:" + a, "x:" + b}, "two inputs are named x"},
		{[]string{a, "a:" + b}, "two inputs are named a"},
		{[]string{"x:-", "y:-"}, "stdin (-) can be read once only"},
		{[]string{"x:"}, "want NAME:PATH"},
		{[]string{"--chunk-size", "1M", "x:" + a}, "--chunk-size applies to fixed inputs only"},
		{[]string{"x.img:-"}, "--fixed needs the input's size"},
	} {
		_, _, err := pmxRun(t, append(base, tc.args...)...)
		var u usageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), tc.says) {
			t.Fatalf("backup %v: %v, want a usage error saying %q", tc.args, err, tc.says)
		}
	}
	if _, _, err := pmxRun(t, "backup", "--type", "vm", "--id", "9", "--add", "x:"+a); err == nil || !strings.Contains(err.Error(), "--add needs --time") {
		t.Fatalf("--add without --time: %v", err)
	}
	if n := len(peer.Files()); n != 0 {
		t.Fatalf("refused command lines published %d files", n)
	}

	// A plain FILE is named by its base name, even with a ":" in it when
	// it starts a path; disk.img is fixed by its name.
	stdout, _, err := pmxRun(t, append(base, "--json", "--chunk-size", "64K", "disk.img:"+a, b)...)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Snapshot string
		Files    []backupJSON
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("--json of two files: %v\n%s", err, stdout)
	}
	const snap = "vm/9/2026-11-25T10:00:00Z"
	if got.Snapshot != snap || len(got.Files) != 2 || got.Files[0].Path != snap+"/disk.img.fidx" || got.Files[1].Path != snap+"/b:c.didx" ||
		got.Files[0].Chunks != 2 || got.Files[1].Bytes != 3000 {
		t.Fatalf("--json printed %+v", got)
	}
	// --fixed makes every input fixed.
	stdout, _, err = pmxRun(t, "backup", "--type", "vm", "--id", "9", "--time", "2026-11-26T10:00:00Z", "--fixed", "one:"+a, "two:"+b)
	if err != nil || !strings.Contains(stdout, "/one.fidx: ") || !strings.Contains(stdout, "/two.fidx: ") || !strings.Contains(stdout, ": 2 files, ") {
		t.Fatalf("--fixed of two inputs: %v\n%s", err, stdout)
	}
}

// A whole-snapshot restore takes its file names from the REST API: one
// that is not a plain file name (a server's bug, or a hostile one) is
// refused before anything is written, never joined into a path outside
// the directory.
func TestPMXRestoreSnapshotRefusesPathNames(t *testing.T) {
	for _, name := range []string{"../escaped.didx", "a/b.didx", "..didx", ".didx", "/abs.didx"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"snapshots":[{"type":"host","backupId":"web-01","time":"2026-11-25T10:00:00Z","files":[
				{"path":"host/web-01/2026-11-25T10:00:00Z/root.pxar.didx","name":"root.pxar.didx","contentSize":"1","chunkCount":"1"},
				{"path":"host/web-01/2026-11-25T10:00:00Z/x.didx","name":%q,"contentSize":"1","chunkCount":"1"}]}]}`, name)
		}))
		parent := t.TempDir()
		dir := filepath.Join(parent, "out")
		_, _, err := pmxRun(t, "restore", "--server", "127.0.0.1:1", "--api", srv.URL, "host/web-01/2026-11-25T10:00:00Z", dir)
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), "not a plain file name") {
			t.Fatalf("%q: %v", name, err)
		}
		if ents, _ := os.ReadDir(parent); len(ents) != 0 {
			t.Fatalf("%q: %d entries written beside the directory", name, len(ents))
		}
	}
}

// x.didx and x.fidx of one snapshot would both be restored as DIR/x: a
// whole-snapshot restore refuses, before writing, rather than let one
// replace the other.
func TestPMXRestoreSnapshotRefusesTwoFilesOfOneName(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"snapshots":[{"type":"host","backupId":"web-01","time":"2026-11-25T10:00:00Z","files":[
			{"path":"host/web-01/2026-11-25T10:00:00Z/x.didx","name":"x.didx","contentSize":"1","chunkCount":"1"},
			{"path":"host/web-01/2026-11-25T10:00:00Z/x.fidx","name":"x.fidx","fixed":true,"contentSize":"1","chunkCount":"1"}]}]}`)
	}))
	defer srv.Close()
	dir := filepath.Join(t.TempDir(), "out")
	_, _, err := pmxRun(t, "restore", "--server", "127.0.0.1:1", "--api", srv.URL, "--force", "host/web-01/2026-11-25T10:00:00Z", dir)
	if err == nil || !strings.Contains(err.Error(), "would both be") {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the directory was made: %v", err)
	}
}
