package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// needCasync skips without the casync binary, except in CI.
func needCasync(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs casync")
	}
	path, err := exec.LookPath("casync")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI needs the casync binary (Debian package casync)")
		}
		t.Skip("casync is not installed: apt-get install casync")
	}
	return path
}

// casyncEnv runs casync with chunkbridge as its remote: the TCP gateway
// through the casync-ssh shim, or the stdio casync-remote through a fake
// ssh that runs the remote command here as sshd would (fakeSSH).
type casyncEnv struct {
	t   *testing.T
	env []string
}

func tcpCasync(t *testing.T, p *process) *casyncEnv { return tcpCasyncAt(t, p.casync) }

// tcpCasyncAt is tcpCasync through another address, such as a relay.
func tcpCasyncAt(t *testing.T, addr string) *casyncEnv {
	dir := t.TempDir()
	shim := filepath.Join(dir, "chunkbridge-casync-ssh")
	if err := os.Symlink(binary, shim); err != nil {
		t.Fatal(err)
	}
	return &casyncEnv{t: t, env: []string{"CASYNC_SSH_PATH=" + shim, "CHUNKBRIDGE_CASYNC_ADDR=" + addr}}
}

func stdioCasync(t *testing.T, p *process) *casyncEnv {
	dir := t.TempDir()
	remote := filepath.Join(dir, "chunkbridge-casync-remote")
	if err := os.Symlink(binary, remote); err != nil {
		t.Fatal(err)
	}
	ssh := fakeSSH(t, "")
	return &casyncEnv{t: t, env: []string{"CASYNC_SSH_PATH=" + ssh, "CASYNC_REMOTE_PATH=" + remote, "CHUNKBRIDGE_CHUNK_SERVICE=" + p.grpc}}
}

func (c *casyncEnv) run(args ...string) string {
	c.t.Helper()
	out, err := c.try(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// try runs casync and returns its failure as an error (for goroutines,
// and for runs that may fail).
func (c *casyncEnv) try(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "casync", args...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Dir = c.t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("casync %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// blob writes n bytes of random data with repeated regions, so that some
// chunks occur more than once.
func blob(t testing.TB, seed uint64, n int) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	for off := n / 4; off+n/8 < n; off += n / 4 { // repeat the first eighth
		copy(data[off:off+n/8], data[:n/8])
	}
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sameFile(t testing.TB, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s (%d bytes) differs from %s (%d bytes)", b, len(y), a, len(x))
	}
}

// tree writes a small directory tree with files, a subfolder and a symlink.
func tree(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "tree")
	for name, size := range map[string]int{"a.txt": 100, "sub/b.bin": 300_000, "sub/deeper/c.bin": 1_500_000, "empty": 0} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		rng := rand.New(rand.NewPCG(uint64(size), 3))
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("a.txt", filepath.Join(dir, "link"))
	return dir
}

// sameTree compares two directory trees: names, types, contents, links.
func sameTree(t *testing.T, a, b string) {
	t.Helper()
	list := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(root, p)
			switch {
			case d.Type()&fs.ModeSymlink != 0:
				target, _ := os.Readlink(p)
				m[rel] = "link:" + target
			case d.IsDir():
				m[rel] = "dir"
			default:
				data, _ := os.ReadFile(p)
				m[rel] = fmt.Sprintf("file:%x", data)
			}
			return nil
		})
		return m
	}
	x, y := list(a), list(b)
	if len(x) != len(y) {
		t.Fatalf("trees differ: %d entries vs %d", len(x), len(y))
	}
	for k, v := range x {
		if y[k] != v {
			t.Fatalf("trees differ at %s", k)
		}
	}
}

func chunksWritten(t *testing.T, p *process) int64 {
	t.Helper()
	resp, err := chunkbridgev1.NewAdminServiceClient(p.conn(t)).GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.ChunksWritten
}

func TestCasyncOverTCP(t *testing.T) {
	needCasync(t)
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	c := tcpCasync(t, p)
	var src string
	seed := uint64(10)
	for _, digest := range []string{"sha512-256", "sha256"} {
		for _, comp := range []string{"zstd", "xz", "gzip"} {
			seed++
			src = blob(t, seed, 6<<20) // new data each time: every push uploads in this compression
			t.Run(digest+"/"+comp, func(t *testing.T) {
				before := chunksWritten(t, p)
				name := fmt.Sprintf("srv:/images/%s-%s.caibx", digest, comp)
				c.run("make", "--digest="+digest, "--compression="+comp, name, src)
				if n := chunksWritten(t, p) - before; n < 20 {
					t.Fatalf("a push of 6 MiB of new data stored %d chunks", n)
				}
				out := filepath.Join(t.TempDir(), "out")
				c.run("extract", name, out)
				sameFile(t, src, out)
			})
		}
	}

	t.Run("same data twice stores no new chunk", func(t *testing.T) {
		before := chunksWritten(t, p)
		c.run("make", "--digest=sha256", "srv:/images/again.caibx", src)
		if after := chunksWritten(t, p); after != before {
			t.Fatalf("pushing known data wrote %d new chunks", after-before)
		}
		out := filepath.Join(t.TempDir(), "out")
		c.run("extract", "srv:/images/again.caibx", out)
		sameFile(t, src, out)
	})

	t.Run("directory tree", func(t *testing.T) {
		dir := tree(t)
		c.run("make", "srv:/trees/t.caidx", dir)
		out := filepath.Join(t.TempDir(), "out")
		c.run("extract", "srv:/trees/t.caidx", out)
		sameTree(t, dir, out)
		list := c.run("list", "srv:/trees/t.caidx")
		for _, name := range []string{"a.txt", "sub/b.bin", "sub/deeper/c.bin", "link"} {
			if !strings.Contains(list, name) {
				t.Fatalf("casync list lacks %s:\n%s", name, list)
			}
		}
	})

	t.Run("REST indexes", func(t *testing.T) {
		get := func(method, path string) (int, string) {
			req, _ := http.NewRequest(method, "http://"+p.http+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			return resp.StatusCode, readAll(t, resp.Body)
		}
		code, body := get("GET", "/v1/indexes?prefix=images/")
		var list struct {
			Indexes []struct{ Name, ChunkCount, Algorithm string }
		}
		json.Unmarshal([]byte(body), &list)
		if code != 200 || len(list.Indexes) != 7 || list.Indexes[0].Name != "images/again.caibx" {
			t.Fatalf("GET /v1/indexes = %d %s", code, body)
		}
		code, body = get("GET", "/v1/indexes/images/again.caibx")
		var info struct{ Name, ChunkCount, ContentSize, Algorithm, Created string }
		json.Unmarshal([]byte(body), &info)
		if code != 200 || info.ContentSize != "6291456" || info.Algorithm != "DIGEST_ALGORITHM_SHA256" || info.Created == "" {
			t.Fatalf("GET /v1/indexes/images/again.caibx = %d %s", code, body)
		}
		if code, body = get("DELETE", "/v1/indexes/images/sha256-gzip.caibx"); code != 200 {
			t.Fatalf("DELETE = %d %s", code, body)
		}
		if code, _ = get("GET", "/v1/indexes/images/sha256-gzip.caibx"); code != 404 {
			t.Fatalf("GET after DELETE = %d, want 404", code)
		}
		if code, _ = get("GET", "/casync/indexes/images/sha256-gzip.caibx"); code != 404 {
			t.Fatalf("casync HTTP GET after DELETE = %d, want 404", code)
		}
	})

	t.Run("gateway metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + p.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(t, resp.Body)
		resp.Body.Close()
		for _, series := range []string{`chunkbridge_casync_sessions_total{result="ok",verb="push"}`, `chunkbridge_casync_chunks_total{direction="received"}`, `chunkbridge_casync_chunks_total{direction="sent"}`} {
			if !strings.Contains(body, series) {
				t.Errorf("/metrics lacks %s", series)
			}
		}
	})

	t.Run("extract over HTTP", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		base := "http://" + p.http + "/casync"
		c.run("extract", "--store="+base+"/chunks", base+"/indexes/images/again.caibx", out)
		sameFile(t, src, out)
	})
}

func TestCasyncOverStdio(t *testing.T) {
	needCasync(t)
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	c := stdioCasync(t, p)
	src := blob(t, 2, 3<<20)
	c.run("make", "srv:/images/stdio.caibx", src)
	out := filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/images/stdio.caibx", out)
	sameFile(t, src, out)
}

func TestCasyncOnMinIO(t *testing.T) {
	needCasync(t)
	srv := miniotest.Shared(t)
	p := start(t, minioEnv(srv), "serve", "all", "--store", "s3://"+miniotest.NewBucketName())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	c := tcpCasync(t, p)
	src := blob(t, 3, 4<<20)
	c.run("make", "--digest=sha256", "srv:/images/s3.caibx", src)
	out := filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/images/s3.caibx", out)
	sameFile(t, src, out)
	out2 := filepath.Join(t.TempDir(), "out2")
	base := "http://" + p.http + "/casync"
	c.run("extract", "--store="+base+"/chunks", base+"/indexes/images/s3.caibx", out2)
	sameFile(t, src, out2)
}
