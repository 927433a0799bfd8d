package main

import (
	"bytes"
	"context"
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
		if !strings.Contains(list, first) {
			t.Fatalf("pmx list lacks %s:\n%s", first, list)
		}
	})
}
