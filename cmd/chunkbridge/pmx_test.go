package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

var snapshotRE = regexp.MustCompile(`snapshot (\S+\.(?:fidx|didx))`)

// pmxCLI runs `chunkbridge pmx …`, with stdin if given, and returns stdout.
func pmxCLI(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"pmx"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chunkbridge pmx %s: %v\n%s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return out.String()
}

// backup runs pmx backup and returns the snapshot path it reports.
func backup(t *testing.T, p *process, stdin []byte, args ...string) string {
	t.Helper()
	out := pmxCLI(t, stdin, append([]string{"backup", "--server", p.pmx}, args...)...)
	m := snapshotRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("pmx backup printed no snapshot path:\n%s", out)
	}
	return m[1]
}

func restore(t *testing.T, p *process, snapshot string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "restored")
	pmxCLI(t, nil, "restore", "--server", p.pmx, snapshot, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// listed reports whether pmx list's output names the snapshot file: its
// snapshot's line, then the file's among those that follow.
func listed(out, file string) bool {
	head := snapshotOf(file) + ": "
	i := strings.Index(out, head)
	if i < 0 {
		return false
	}
	for _, l := range strings.Split(out[i:], "\n")[1:] {
		if !strings.HasPrefix(l, "  ") {
			return false
		}
		if strings.HasPrefix(l, "  "+file[len(snapshotOf(file))+1:]+" ") {
			return true
		}
	}
	return false
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPMXOnFS(t *testing.T) {
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	pmxScenario(t, p)
}

func TestPMXOnMinIO(t *testing.T) {
	srv := miniotest.Shared(t)
	p := start(t, minioEnv(srv), "serve", "all", "--store", "s3://"+miniotest.NewBucketName())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	pmxScenario(t, p)
}

func pmxScenario(t *testing.T, p *process) {
	t.Run("fixed images of awkward sizes", func(t *testing.T) {
		for i, size := range []int{0, 1, 3<<20 + 123} {
			data := randomBytes(uint64(i), size)
			// One backup id each: two backups of one id in the same second
			// are the same snapshot, which EXCL refuses.
			id := fmt.Sprint(100 + i)
			args := []string{"--type", "vm", "--id", id, "--name", "disk.img", "--fixed", "--chunk-size", "1048576", writeFile(t, data)}
			if size == 0 {
				args = append(args, "--allow-empty") // refused without it
			}
			snap := backup(t, p, nil, args...)
			if !strings.HasPrefix(snap, "vm/"+id+"/") || !strings.HasSuffix(snap, "/disk.img.fidx") {
				t.Fatalf("snapshot path %q", snap)
			}
			if got := restore(t, p, snap); !bytes.Equal(got, data) {
				t.Fatalf("size %d: restored %d bytes that differ", size, len(got))
			}
		}
	})

	stream := randomBytes(42, 6<<20)
	var first string
	t.Run("dynamic stream from stdin", func(t *testing.T) {
		first = backup(t, p, stream, "--type", "host", "--id", "web-01", "--name", "root.pxar", "--time", "2026-11-24T10:00:00Z", "-")
		if !strings.HasSuffix(first, "/root.pxar.didx") {
			t.Fatalf("snapshot path %q", first)
		}
		if got := restore(t, p, first); !bytes.Equal(got, stream) {
			t.Fatal("restored stream differs")
		}
	})

	t.Run("incremental backup uploads only changed chunks", func(t *testing.T) {
		changed := bytes.Clone(stream)
		copy(changed[3<<20:], randomBytes(7, 1000)) // one region of 1000 bytes
		before := chunksWritten(t, p)
		second := backup(t, p, changed, "--type", "host", "--id", "web-01", "--name", "root.pxar", "--time", "2026-11-25T10:00:00Z", "-")
		n := chunksWritten(t, p) - before
		if second == first || n < 1 || n > 3 {
			t.Fatalf("incremental backup wrote %d new chunks (want 1 to 3: only those around the change)", n)
		}
		if got := restore(t, p, second); !bytes.Equal(got, changed) {
			t.Fatal("restored incremental backup differs")
		}
		if got := restore(t, p, first); !bytes.Equal(got, stream) {
			t.Fatal("the first backup no longer restores")
		}
	})

	t.Run("same bytes through casync store no new chunk", func(t *testing.T) {
		needCasync(t)
		src := writeFile(t, stream)
		before := chunksWritten(t, p)
		c := tcpCasync(t, p)
		c.run("make", "--digest=sha256", "srv:/cross/stream.caibx", src)
		if n := chunksWritten(t, p) - before; n != 0 {
			t.Fatalf("casync make of bytes PMXBCKUP already stored wrote %d chunks", n)
		}
	})

	t.Run("casync extract of PMXBCKUP snapshots", func(t *testing.T) {
		needCasync(t)
		base := "http://" + p.http + "/casync"
		c := tcpCasync(t, p)
		out := filepath.Join(t.TempDir(), "out")
		c.run("extract", "--store="+base+"/chunks", base+"/indexes/snapshots/"+strings.TrimSuffix(first, ".didx")+".caibx", out)
		sameFile(t, writeFile(t, stream), out)
		img := randomBytes(99, 2<<20+5)
		snap := backup(t, p, nil, "--type", "vm", "--id", "200", "--name", "x.img", "--fixed", "--chunk-size", "65536", writeFile(t, img))
		out2 := filepath.Join(t.TempDir(), "out2")
		c.run("extract", "--store="+base+"/chunks", base+"/indexes/snapshots/"+strings.TrimSuffix(snap, ".fidx")+".caibx", out2)
		sameFile(t, writeFile(t, img), out2)
	})

	t.Run("hashes and list", func(t *testing.T) {
		hashes := strings.Fields(pmxCLI(t, nil, "hashes", "--server", p.pmx, first))
		if len(hashes) < 10 || len(hashes[0]) != 64 {
			t.Fatalf("pmx hashes printed %d lines", len(hashes))
		}
		list := pmxCLI(t, nil, "list", "--api", "http://"+p.http)
		if !listed(list, first) {
			t.Fatalf("pmx list lacks %s:\n%s", first, list)
		}
	})
}

// Several files in one snapshot, end to end: one pmx backup writes them
// over one connection, a second one adds a file with --add, list shows
// them together, restore brings back one or all, and casync reads each
// through the HTTP store.
func TestPMXSnapshotOfSeveralFiles(t *testing.T) {
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	api := "http://" + p.http
	root, disk, etc := randomBytes(61, 2<<20+7), randomBytes(62, 3<<20), randomBytes(63, 100<<10)
	const when = "2026-11-25T10:00:00Z"
	const snap = "host/web-01/" + when
	out := pmxCLI(t, nil, "backup", "--server", p.pmx, "--type", "host", "--id", "web-01", "--time", when,
		"--chunk-size", "1M", "root.pxar:"+writeFile(t, root), "disk.img:"+writeFile(t, disk))
	// A summary per file, in order, then one for the snapshot.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "snapshot "+snap+"/root.pxar.didx: ") ||
		!strings.HasPrefix(lines[1], "snapshot "+snap+"/disk.img.fidx: ") || !strings.HasPrefix(lines[2], "snapshot "+snap+": 2 files, ") {
		t.Fatalf("pmx backup of two files printed:\n%s", out)
	}

	// The snapshot is taken: a second run without --add is refused whole,
	// with --add a file joins it over another connection, and a file it
	// has is refused even so.
	if out, err := pmxEnvRun(nil, "backup", "--server", p.pmx, "--type", "host", "--id", "web-01", "--time", when, "etc.pxar:"+writeFile(t, etc)); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("a second backup into the snapshot without --add: %v\n%s", err, out)
	}
	added := backup(t, p, etc, "--type", "host", "--id", "web-01", "--time", when, "--add", "etc.pxar:-")
	if added != snap+"/etc.pxar.didx" {
		t.Fatalf("--add wrote %s, want it in %s", added, snap)
	}
	if out, err := pmxEnvRun(nil, "backup", "--server", p.pmx, "--type", "host", "--id", "web-01", "--time", when, "--add", "root.pxar:"+writeFile(t, etc)); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("--add of a file the snapshot has: %v\n%s", err, out)
	}

	list := pmxCLI(t, nil, "list", "--api", api, "--type", "host", "--id", "web-01")
	for _, f := range []string{"root.pxar.didx", "disk.img.fidx", "etc.pxar.didx"} {
		if !listed(list, snap+"/"+f) {
			t.Fatalf("pmx list lacks %s under %s:\n%s", f, snap, list)
		}
	}
	if !strings.Contains(list, snap+": 3 files, ") || !regexp.MustCompile(`\n  disk\.img\.fidx +3\.0 MiB +3 chunks +fixed\n`).MatchString(list) {
		t.Fatalf("pmx list: want the snapshot's 3 files with size, chunk count and kind:\n%s", list)
	}

	// One file by --name (as listed, or without .didx/.fidx), or them all.
	dst := t.TempDir()
	pmxCLI(t, nil, "restore", "--server", p.pmx, snap, "--name", "disk.img", filepath.Join(dst, "one"))
	sameFile(t, writeFile(t, disk), filepath.Join(dst, "one"))
	pmxCLI(t, nil, "restore", "--server", p.pmx, "host/web-01/latest", "--name", "root.pxar.didx", filepath.Join(dst, "two"))
	sameFile(t, writeFile(t, root), filepath.Join(dst, "two"))
	if out, err := pmxEnvRun(nil, "restore", "--server", p.pmx, snap, filepath.Join(dst, "all")); err == nil || !strings.Contains(out, "--api") || !strings.Contains(out, "--name") {
		t.Fatalf("restore of a whole snapshot without --api: %v, want a usage error naming --api and --name\n%s", err, out)
	}
	all := filepath.Join(dst, "all")
	out = pmxCLI(t, nil, "restore", "--server", p.pmx, "--api", api, snap, all)
	for name, want := range map[string][]byte{"root.pxar": root, "disk.img": disk, "etc.pxar": etc} {
		sameFile(t, writeFile(t, want), filepath.Join(all, name))
		if !strings.Contains(out, " to "+filepath.Join(all, name)+"\n") {
			t.Fatalf("restore summary lacks %s:\n%s", name, out)
		}
	}
	if out, err := pmxEnvRun(nil, "restore", "--server", p.pmx, "--api", api, snap, all); err == nil || !strings.Contains(out, "--force") {
		t.Fatalf("a second restore into the same directory: %v, want refused without --force\n%s", err, out)
	}
	var again struct {
		Snapshot string
		Files    []restoreJSON
	}
	if err := json.Unmarshal([]byte(pmxCLI(t, nil, "restore", "--server", p.pmx, "--api", api, "--force", "--json", "host/web-01/latest", all)), &again); err != nil ||
		again.Snapshot != snap || len(again.Files) != 3 || again.Files[0].Bytes == 0 {
		t.Fatalf("restore --force --json of the latest snapshot: %+v, %v", again, err)
	}

	// Every file of the snapshot is a casync blob index in the HTTP store.
	needCasync(t)
	c := tcpCasync(t, p)
	base := "http://" + p.http + "/casync"
	for name, want := range map[string][]byte{"root.pxar.didx": root, "disk.img.fidx": disk, "etc.pxar.didx": etc} {
		got := filepath.Join(t.TempDir(), "out")
		c.run("extract", "--store="+base+"/chunks", base+"/indexes/snapshots/"+snap+"/"+strings.TrimSuffix(strings.TrimSuffix(name, ".didx"), ".fidx")+".caibx", got)
		sameFile(t, writeFile(t, want), got)
	}
}
