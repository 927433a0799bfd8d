package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caproto"
)

// blockingPipe is a pipe in blocking mode, as sshd may hand it.
func blockingPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w = os.NewFile(uintptr(fds[0]), "pipe-r"), os.NewFile(uintptr(fds[1]), "pipe-w")
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// casync-remote on blocking stdio pipes still has deadlines: a client that
// requests big chunks and never reads ends the process at the write
// timeout instead of holding it forever.
func TestCasyncRemoteCutsStalledClientOnBlockingPipes(t *testing.T) {
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	up, err := chunkbridgev1.NewChunkServiceClient(p.conn(t)).UploadChunks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	rng := rand.NewChaCha8([32]byte{7})
	var ids [][32]byte
	for range 8 {
		raw := make([]byte, 1<<20)
		rng.Read(raw)
		id := sha256.Sum256(raw)
		ids = append(ids, id)
		if err := up.Send(&chunkbridgev1.UploadChunksRequest{Id: hex.EncodeToString(id[:]), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256,
			Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD, Data: enc.EncodeAll(raw, nil)}); err != nil {
			t.Fatal(err)
		}
	}
	up.CloseSend()
	for range ids {
		if ack, err := up.Recv(); err != nil || ack.GetCode() != 0 {
			t.Fatalf("storing a test chunk: %v %s", err, ack.GetMessage())
		}
	}

	inR, inW := blockingPipe(t)
	outR, outW := blockingPipe(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "casync-remote", "pull", "-", "-", "-", "/default.castr")
	cmd.Env = append(os.Environ(), "CHUNKBRIDGE_CHUNK_SERVICE="+p.grpc, "CHUNKBRIDGE_SESSION_WRITE_TIMEOUT=1s")
	var stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	var b []byte
	b = (&caproto.Hello{Features: caproto.PullChunks}).Encode(b)
	b = (&caproto.Request{IDs: ids}).Encode(b)
	if _, err := inW.Write(b); err != nil {
		t.Fatal(err)
	}
	// Nothing reads outR, and stdin stays open: only the write deadline
	// can end the session.
	err = cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("casync-remote still running after a minute with a 1s write timeout\n%s", stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(stderr.String(), "read nothing for 1s") {
		t.Fatalf("casync-remote = %v, want the write deadline\n%s", err, stderr.String())
	}
	outR.Close()
}
