package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/format/chunker"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/s3"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

// healStore is a running `serve all` and the store it uses, opened by the
// test too, to damage chunks behind the server's back and look at them.
type healStore struct {
	p     *process
	store storage.Store
}

func startHealStores(t *testing.T) []struct {
	name  string
	start func(t *testing.T) healStore
} {
	return []struct {
		name  string
		start func(t *testing.T) healStore
	}{
		{"fs", func(t *testing.T) healStore {
			dir := t.TempDir()
			p := start(t, nil, "serve", "all", "--store", dir)
			s, err := fs.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			return healStore{p: p, store: s}
		}},
		{"minio", func(t *testing.T) healStore {
			srv := miniotest.Shared(t)
			bucket := miniotest.NewBucketName()
			p := start(t, minioEnv(srv), "serve", "all", "--store", "s3://"+bucket)
			cfg := srv.Config()
			cfg.Bucket = bucket
			s, err := s3.Open(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			return healStore{p: p, store: s}
		}},
	}
}

// damage rewrites a stored chunk as bit rot would.
func (h healStore) damage(t *testing.T, id string) {
	t.Helper()
	storagetest.Overwrite(t, h.store, "chunks/"+id[:4]+"/"+id+".cacnk", []byte("bit rot: not a zstd frame any more"))
}

// quarantined reports whether id is out of chunks/ and in quarantine/.
func (h healStore) quarantined(t *testing.T, id string) bool {
	t.Helper()
	_, err := h.store.Stat(t.Context(), "chunks/"+id[:4]+"/"+id+".cacnk")
	if err == nil {
		return false
	}
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	n := 0
	if err := h.store.List(t.Context(), "quarantine/chunks/"+id[:4]+"/"+id+".", func(storage.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// chunkIDs cuts data as casync and a PMXBCKUP stream backup do (casync's
// default chunker) and returns the ids: SHA-256 (PMXBCKUP) or SHA-512/256
// (casync's default).
func chunkIDs(t *testing.T, data []byte, sha512256 bool) []string {
	t.Helper()
	c, err := chunker.New(bytes.NewReader(data), 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for {
		piece, err := c.Next()
		if err != nil {
			return ids
		}
		if sha512256 {
			s := sha512.Sum512_256(piece)
			ids = append(ids, hex.EncodeToString(s[:]))
		} else {
			s := sha256.Sum256(piece)
			ids = append(ids, hex.EncodeToString(s[:]))
		}
	}
}

// pmxTry runs `chunkbridge pmx …` and returns its output and error.
func pmxTry(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"pmx"}, args...)...).CombinedOutput()
	return string(out), err
}

// Healing over PMXBCKUP, on a directory and on MinIO: a restore that reads
// a corrupt chunk fails with a clear error and moves the chunk to
// quarantine; verify then names the chunk missing and the snapshot file
// damaged; the next incremental backup of the same data uploads the chunk
// again (its hash list no longer offers it), after which verify is clean
// and both snapshots restore. Without quarantine the backup would skip the
// chunk as stored and the restore would keep failing.
func TestHealOverPMX(t *testing.T) {
	for _, tc := range startHealStores(t) {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.start(t)
			waitHealth(t, h.p.conn(t), healthpb.HealthCheckResponse_SERVING)
			data := randomBytes(81, 1<<20)
			first := backup(t, h.p, data, "--type", "host", "--id", "heal", "--name", "data.bin", "--time", "2026-11-24T10:00:00Z", "-")
			victim := chunkIDs(t, data, false)[3]
			h.damage(t, victim)

			out, err := pmxTry("restore", "--server", h.p.pmx, first, filepath.Join(t.TempDir(), "out"))
			if err == nil || !strings.Contains(out, victim) || !strings.Contains(out, "quarantine") {
				t.Fatalf("restore of a corrupt chunk: %v\n%s", err, out)
			}
			if !h.quarantined(t, victim) {
				t.Fatal("the read that found the chunk corrupt did not move it to quarantine")
			}
			snapFile := "snapshots/" + first
			out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc)
			if code != 1 || !strings.Contains(out, "MISSING       "+victim) || !strings.Contains(out, "quarantined as quarantine/chunks/") ||
				!strings.Contains(out, "damaged files (cannot be restored whole until then): "+snapFile) {
				t.Fatalf("verify after the read: exit %d\n%s", code, out)
			}

			second := backup(t, h.p, data, "--type", "host", "--id", "heal", "--name", "data.bin", "--time", "2026-11-25T10:00:00Z", "-")
			if out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc); code != 0 || strings.Contains(out, "damaged") {
				t.Fatalf("verify after the next backup: exit %d\n%s", code, out)
			}
			for _, snap := range []string{first, second} {
				if got := restore(t, h.p, snap); !bytes.Equal(got, data) {
					t.Fatalf("%s restores different data", snap)
				}
			}
		})
	}
}

// Healing over casync: verify finds a pushed chunk corrupt, moves it to
// quarantine and names the index damaged; pushing the same data again
// (stock casync, another index) uploads the chunk again and the first
// index extracts. Then --repair-from heals from what the operator has: a
// local casync store of the data, and the plain file of a PMXBCKUP backup.
func TestHealOverCasyncAndRepairFrom(t *testing.T) {
	needCasync(t)
	h := startHealStores(t)[0].start(t)
	waitHealth(t, h.p.conn(t), healthpb.HealthCheckResponse_SERVING)
	c := tcpCasync(t, h.p)
	img := blob(t, 90, 1<<20)
	data, _ := os.ReadFile(img)
	ids := chunkIDs(t, data, true)
	c.run("make", "srv:/images/a.caibx", img)

	h.damage(t, ids[1])
	out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc)
	if code != 1 || !strings.Contains(out, "CORRUPT       "+ids[1]) || !strings.Contains(out, "moved 1 corrupt chunks to quarantine") ||
		!strings.Contains(out, "damaged files (cannot be restored whole until then): indexes/images/a.caibx") || !h.quarantined(t, ids[1]) {
		t.Fatalf("verify of a corrupt chunk: exit %d\n%s", code, out)
	}
	c.run("make", "srv:/images/again.caibx", img)
	dst := filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/images/a.caibx", dst)
	sameFile(t, img, dst)
	if out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc); code != 0 {
		t.Fatalf("verify after the second push: exit %d\n%s", code, out)
	}

	t.Run("repair from a casync store", func(t *testing.T) {
		local := t.TempDir()
		c.run("make", "--store="+filepath.Join(local, "store"), filepath.Join(local, "a.caibx"), img)
		h.damage(t, ids[2])
		h.damage(t, ids[4])
		out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc, "--repair-from", filepath.Join(local, "store"))
		if code != 0 || !strings.Contains(out, "repair: repaired 2 of 2 damaged chunks (2 from chunk files, 0 by chunking files); still missing 0") ||
			!strings.Contains(out, "repair: whole again: indexes/images/a.caibx, indexes/images/again.caibx") {
			t.Fatalf("verify --repair-from a casync store: exit %d\n%s", code, out)
		}
		dst := filepath.Join(t.TempDir(), "out")
		c.run("extract", "srv:/images/a.caibx", dst)
		sameFile(t, img, dst)
	})

	t.Run("repair from a file", func(t *testing.T) {
		stream := randomBytes(91, 1<<20)
		file := writeFile(t, stream)
		snap := backup(t, h.p, nil, "--type", "host", "--id", "file", "--name", "s.bin", file)
		fixed := randomBytes(92, 9<<20)
		fixedFile := writeFile(t, fixed)
		fsnap := backup(t, h.p, nil, "--type", "vm", "--id", "200", "--name", "disk.img", "--fixed", fixedFile)
		victim := chunkIDs(t, stream, false)[5]
		h.damage(t, victim)
		s := sha256.Sum256(fixed[4<<20 : 8<<20])
		fixedVictim := hex.EncodeToString(s[:])
		h.damage(t, fixedVictim)
		dir := t.TempDir()
		os.Rename(file, filepath.Join(dir, "s.bin"))
		os.Rename(fixedFile, filepath.Join(dir, "disk.img"))
		out, code := runCLI(t, "verify", "--chunk-service", h.p.grpc, "--repair-from", dir)
		if code != 0 || !strings.Contains(out, "repair: repaired 2 of 2 damaged chunks (0 from chunk files, 2 by chunking files); still missing 0") {
			t.Fatalf("verify --repair-from files: exit %d\n%s", code, out)
		}
		if got := restore(t, h.p, snap); !bytes.Equal(got, stream) {
			t.Fatal("the stream backup restores different data after repair")
		}
		if got := restore(t, h.p, fsnap); !bytes.Equal(got, fixed) {
			t.Fatal("the fixed backup restores different data after repair")
		}

		// What the operator lacks is named, with the file that needs it.
		other := randomBytes(93, 1<<20)
		osnap := backup(t, h.p, other, "--type", "host", "--id", "lost", "--name", "l.bin", "-")
		lost := chunkIDs(t, other, false)[0]
		h.damage(t, lost)
		out, code = runCLI(t, "verify", "--chunk-service", h.p.grpc, "--repair-from", dir)
		if code != 1 || !strings.Contains(out, "NOT REPAIRED  "+lost) || !strings.Contains(out, "still missing 1") ||
			!strings.Contains(out, "repair: still damaged: snapshots/"+osnap) {
			t.Fatalf("verify --repair-from without the data: exit %d\n%s", code, out)
		}
	})
}
