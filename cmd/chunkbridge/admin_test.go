package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/s3"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// runCLI runs the binary and returns its output and exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("chunkbridge %v: %v", args, err)
	return "", -1
}

type cliChunk struct {
	id   string
	data []byte
}

func cliChunks(prefix string, n int) []cliChunk {
	out := make([]cliChunk, n)
	for i := range out {
		data := []byte(strings.Repeat(fmt.Sprintf("%s chunk %d; ", prefix, i), 40))
		sum := sha256.Sum256(data)
		out[i] = cliChunk{hex.EncodeToString(sum[:]), data}
	}
	return out
}

// The admin commands against a running server, on a directory and on
// MinIO: verify exits 0 on an intact store and 1 (naming the chunk and the
// index that references it) once a stored chunk is overwritten; gc with
// grace 0 deletes exactly the chunks nothing references; stats and prune
// report.
func TestAdminCommands(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) (env []string, store string, corrupt func(key string, data []byte))
	}{
		{"fs", func(t *testing.T) ([]string, string, func(string, []byte)) {
			dir := t.TempDir()
			return nil, dir, func(key string, data []byte) {
				if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(key)), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"minio", func(t *testing.T) ([]string, string, func(string, []byte)) {
			srv := miniotest.Shared(t)
			cfg := srv.Config()
			return minioEnv(srv), "s3://" + cfg.Bucket, func(key string, data []byte) {
				s, err := s3.Open(t.Context(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				info, err := s.Stat(t.Context(), key)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), storage.Metadata(info.Metadata)); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env, store, corrupt := tc.setup(t)
			p := start(t, env, "serve", "chunk", "--store", store)
			conn := p.conn(t)
			chunks := chunkbridgev1.NewChunkServiceClient(conn)
			cat := chunkbridgev1.NewCatalogServiceClient(conn)
			indexed, orphans := cliChunks("indexed", 10), cliChunks("orphan", 3)
			upload(t, chunks, append(indexed, orphans...))
			putCLIIndex(t, cat, "images/a.caibx", indexed[:6])
			putCLIIndex(t, cat, "images/b.caibx", indexed[4:])
			writeCLISnapshot(t, cat, "2026-11-24T10:00:00Z", indexed[:2])
			writeCLISnapshot(t, cat, "2026-11-25T10:00:00Z", indexed[:3])
			cs := []string{"--chunk-service", p.grpc}

			out, code := runCLI(t, append([]string{"verify"}, cs...)...)
			if code != 0 || !strings.Contains(out, "verified 13 of 13 chunks") {
				t.Fatalf("verify of an intact store: exit %d\n%s", code, out)
			}
			out, code = runCLI(t, append([]string{"stats"}, cs...)...)
			if code != 0 || !strings.Contains(out, "chunks            13") || !strings.Contains(out, "casync indexes    2") || !strings.Contains(out, "snapshots         2 (2 files, 1 backup groups)") {
				t.Fatalf("stats: exit %d\n%s", code, out)
			}
			out, code = runCLI(t, append([]string{"gc", "--grace", "0", "--dry-run"}, cs...)...)
			if code != 0 || !strings.Contains(out, "would delete  3 chunks") {
				t.Fatalf("gc --dry-run: exit %d\n%s", code, out)
			}
			out, code = runCLI(t, append([]string{"gc", "--grace", "0"}, cs...)...)
			if code != 0 || !strings.Contains(out, "deleted       3 chunks") || !strings.Contains(out, "kept          10 chunks") {
				t.Fatalf("gc: exit %d\n%s", code, out)
			}
			out, code = runCLI(t, append([]string{"prune", "--keep-last", "1", "--type", "host", "--id", "web-01", "--dry-run"}, cs...)...)
			if code != 0 || !strings.Contains(out, "keep         host/web-01/2026-11-25T10:00:00Z  keep-last (1 of 1)") ||
				!strings.Contains(out, "would remove host/web-01/2026-11-24T10:00:00Z  no keep rule selects it") {
				t.Fatalf("prune --dry-run: exit %d\n%s", code, out)
			}

			victim := indexed[1] // in images/a.caibx and both snapshots
			corrupt("chunks/"+victim.id[:4]+"/"+victim.id+".cacnk", []byte("bit rot"))
			out, code = runCLI(t, append([]string{"verify"}, cs...)...)
			t.Logf("verify after corruption:\n%s", out)
			if code != 1 || !strings.Contains(out, "CORRUPT       "+victim.id) || !strings.Contains(out, "indexes/images/a.caibx") ||
				!strings.Contains(out, "snapshots/host/web-01/2026-11-25T10:00:00Z/root.pxar.didx") || !strings.Contains(out, "corrupt 1, missing 0") {
				t.Fatalf("verify after corruption: exit %d, want 1\n%s", code, out)
			}
			// The first run moved the corrupt chunk to quarantine: it is
			// missing now, and its files stay damaged until it is uploaded.
			out, code = runCLI(t, append([]string{"verify", "--json", "--sample", "1", "--rate-limit", "10M"}, cs...)...)
			var report struct {
				Corrupt, Missing string
				Problems         []struct{ ID, Quarantine string }
				DamagedFiles     []string
			}
			if code != 1 || json.Unmarshal([]byte(out), &report) != nil || report.Corrupt != "0" || report.Missing != "1" || len(report.Problems) != 1 ||
				report.Problems[0].Quarantine == "" || len(report.DamagedFiles) != 3 {
				t.Fatalf("verify --json: exit %d\n%s", code, out)
			}
			if out, code := runCLI(t, "verify", "--chunk-service", p.grpc, "--sample", "2"); code != 2 || !strings.Contains(out, "InvalidArgument") {
				t.Fatalf("verify --sample 2: exit %d\n%s", code, out)
			}
		})
	}
}

func upload(t *testing.T, chunks chunkbridgev1.ChunkServiceClient, cs []cliChunk) {
	t.Helper()
	stream, err := chunks.UploadChunks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if err := stream.Send(&chunkbridgev1.UploadChunksRequest{Id: c.id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: c.data}); err != nil {
			t.Fatal(err)
		}
	}
	stream.CloseSend()
	for range cs {
		resp, err := stream.Recv()
		if err != nil || resp.Code != 0 {
			t.Fatalf("upload: %v %v", resp, err)
		}
	}
}

func putCLIIndex(t *testing.T, cat chunkbridgev1.CatalogServiceClient, name string, cs []cliChunk) {
	t.Helper()
	h, _ := caindex.BlobHeader(caindex.SHA256, 1, 1024, 1<<20)
	var buf bytes.Buffer
	w, _ := caindex.NewWriter(&buf, h)
	for _, c := range cs {
		id, _ := hex.DecodeString(c.id)
		w.Add([32]byte(id), uint64(len(c.data)))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	stream, err := cat.PutIndex(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&chunkbridgev1.PutIndexRequest{Name: name, Data: buf.Bytes()})
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatalf("PutIndex %s: %v", name, err)
	}
}

func writeCLISnapshot(t *testing.T, cat chunkbridgev1.CatalogServiceClient, when string, cs []cliChunk) {
	t.Helper()
	at, _ := time.Parse(time.RFC3339, when)
	stream, err := cat.WriteSnapshotFile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{
		Create: &chunkbridgev1.WriteSnapshotFileRequest_Create{Type: "host", BackupId: "web-01", Time: timestamppb.New(at), Name: "root.pxar"}}})
	var entries []*chunkbridgev1.WriteSnapshotFileRequest_Entry
	var off int64
	for _, c := range cs {
		entries = append(entries, &chunkbridgev1.WriteSnapshotFileRequest_Entry{Offset: off, Digest: c.id})
		off += int64(len(c.data))
	}
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Entries_{Entries: &chunkbridgev1.WriteSnapshotFileRequest_Entries{Entries: entries}}})
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Commit_{Commit: &chunkbridgev1.WriteSnapshotFileRequest_Commit{}}})
	stream.CloseSend()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("snapshot %s: %v", when, err)
		}
		if resp.GetCommitted() != nil {
			return
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"5000": 5000, "500k": 500 << 10, "10M": 10 << 20, "10MB": 10_000_000, "10MiB/s": 10 << 20, "1.5G": 3 << 29, "0": 0} {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "10X", "-1"} {
		if _, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) succeeded", in)
		}
	}
}

// Real casync pushes, then GC: deleting one of two indexes that share
// chunks and collecting with grace 0 leaves the other extractable, and
// pushing the deleted data again re-uploads exactly what GC removed (the
// presence cache forgot it).
func TestCasyncThenGC(t *testing.T) {
	needCasync(t)
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	c := tcpCasync(t, p)
	a := blob(t, 40, 3<<20)
	data, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := os.ReadFile(blob(t, 41, 3<<20))
	copy(data[len(data)/2:], fresh) // b shares the first half with a
	b := filepath.Join(t.TempDir(), "b")
	os.WriteFile(b, data, 0o644)
	c.run("make", "srv:/images/a.caibx", a)
	c.run("make", "srv:/images/b.caibx", b)
	if _, err := chunkbridgev1.NewCatalogServiceClient(p.conn(t)).DeleteIndex(t.Context(), &chunkbridgev1.DeleteIndexRequest{Name: "images/a.caibx"}); err != nil {
		t.Fatal(err)
	}
	out, code := runCLI(t, "gc", "--grace", "0", "--json", "--chunk-service", p.grpc)
	var report struct{ ChunksDeleted, ChunksKept string }
	if code != 0 || json.Unmarshal([]byte(out), &report) != nil || report.ChunksDeleted == "0" || report.ChunksKept == "0" {
		t.Fatalf("gc: exit %d\n%s", code, out)
	}
	dst := filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/images/b.caibx", dst)
	sameFile(t, b, dst)
	if out, code := runCLI(t, "verify", "--chunk-service", p.grpc); code != 0 {
		t.Fatalf("verify after gc: exit %d\n%s", code, out)
	}
	before := chunksWritten(t, p)
	c.run("make", "srv:/images/a.caibx", a)
	if n := fmt.Sprint(chunksWritten(t, p) - before); n != report.ChunksDeleted {
		t.Fatalf("pushing a again wrote %s chunks; GC had deleted %s", n, report.ChunksDeleted)
	}
	dst = filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/images/a.caibx", dst)
	sameFile(t, a, dst)
}
