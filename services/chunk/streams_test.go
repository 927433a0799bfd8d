package chunk_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// A client that opens download and read streams and reads nothing holds
// no more than the stream budget, and cannot keep a client that reads
// from its chunks: once others wait for the budget, its streams are ended
// with ResourceExhausted. The budget is smaller than what the stalled
// streams ask for, so without the watch the reading client never gets a
// share.
func TestStalledStreamsAreBoundedAndEnded(t *testing.T) {
	svc, err := chunk.New(memory.New(), chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	const budget = 20 << 20 // a little more than one reservation of the largest chunk
	srv := chunk.NewServer(svc, chunk.ServerConfig{Window: 8, StreamMemory: budget, StallTimeout: 200 * time.Millisecond})
	var mu sync.Mutex
	var ended []string
	srv.OnStall(func(stream string) {
		mu.Lock()
		defer mu.Unlock()
		ended = append(ended, stream)
	})
	dial := serveStreams(t, srv)
	// The reading client's windows take a chunk at once: its sends never
	// wait for it, however slow the machine.
	c := chunkbridgev1.NewChunkServiceClient(dial(16 << 20))

	// 24 incompressible chunks of 1 MiB, uploaded over gRPC: uploads take
	// their share too, and give it back once stored.
	ids := make([]string, 24)
	up, err := c.UploadChunks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for i := range ids {
		data := make([]byte, 1<<20)
		rand.Read(data)
		sum := sha256.Sum256(data)
		ids[i] = hex.EncodeToString(sum[:])
		if err := up.Send(&chunkbridgev1.UploadChunksRequest{Id: ids[i], Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	up.CloseSend()
	for range ids {
		if r, err := up.Recv(); err != nil || r.GetCode() != 0 {
			t.Fatalf("upload: %v, %v", r, err)
		}
	}
	if _, err := up.Recv(); err != io.EOF {
		t.Fatalf("upload end = %v", err)
	}

	// The stalled client: three downloads of everything and a read
	// stream of everything, on one connection, none of them read.
	stalled := chunkbridgev1.NewChunkServiceClient(dial(64 << 10))
	sctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var downs []grpc.ServerStreamingClient[chunkbridgev1.DownloadChunksResponse]
	for range 3 {
		d, err := stalled.DownloadChunks(sctx, &chunkbridgev1.DownloadChunksRequest{Ids: ids})
		if err != nil {
			t.Fatal(err)
		}
		downs = append(downs, d)
	}
	reads, err := stalled.ReadChunks(sctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if err := reads.Send(&chunkbridgev1.ReadChunksRequest{Tag: uint64(i), Id: id}); err != nil {
			t.Fatal(err)
		}
	}

	// The reading client gets every chunk, in order.
	gctx, gcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer gcancel()
	good, err := c.DownloadChunks(gctx, &chunkbridgev1.DownloadChunksRequest{Ids: ids})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		r, err := good.Recv()
		if err != nil {
			t.Fatalf("reading client, chunk %d of %d: %v", i, len(ids), err)
		}
		if r.GetId() != id || r.GetCode() != 0 || len(r.GetData()) == 0 {
			t.Fatalf("reading client, chunk %d: id %s code %d %q", i, r.GetId(), r.GetCode(), r.GetMessage())
		}
	}
	if _, err := good.Recv(); err != io.EOF {
		t.Fatalf("reading client: end = %v", err)
	}

	// Each stalled stream was ended, or, read now, runs to its end.
	var exhausted int
	outcome := func(name string, err error) {
		switch {
		case err == nil:
		case status.Code(err) == codes.ResourceExhausted:
			exhausted++
			if msg := status.Convert(err).Message(); !strings.Contains(msg, name) || !strings.Contains(msg, "read nothing") {
				t.Errorf("%s ended with %q: want the stream named and why", name, msg)
			}
		default:
			t.Errorf("%s: %v, want ResourceExhausted or every chunk", name, err)
		}
	}
	for _, d := range downs {
		outcome("DownloadChunks", drain(d.Recv))
	}
	reads.CloseSend()
	outcome("ReadChunks", drain(reads.Recv))
	mu.Lock()
	if exhausted == 0 || exhausted != len(ended) {
		t.Errorf("%d streams ended with ResourceExhausted, the watch ended %d (%q): want the same, at least one", exhausted, len(ended), ended)
	}
	mu.Unlock()

	cancel()
	srv.WaitSenders()
	b := srv.StreamBudget()
	if b.Peak() > budget {
		t.Errorf("the streams held %d bytes at once, more than the budget of %d", b.Peak(), budget)
	}
	if b.Peak() < budget/2 {
		t.Errorf("the streams held at most %d bytes: the stalled ones were not charged", b.Peak())
	}
	if n := b.InUse(); n != 0 {
		t.Errorf("%d bytes still held after every stream ended", n)
	}
}

// drain receives until the stream ends: nil at a clean end.
func drain[T any](recv func() (*T, error)) error {
	for {
		if _, err := recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// serveStreams serves srv over an in-memory listener and returns a dialer
// of connections with fixed flow-control windows: a stream its client does
// not read blocks the server's Send after that many bytes.
func serveStreams(t *testing.T, srv *chunk.Server) func(window int32) *grpc.ClientConn {
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(chunk.MaxSize+(1<<20)), grpc.MaxSendMsgSize(chunk.MaxSize+(1<<20)))
	chunkbridgev1.RegisterChunkServiceServer(gs, srv)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return func(window int32) *grpc.ClientConn {
		conn, err := grpc.NewClient("passthrough:///streams",
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(window), grpc.WithInitialConnWindowSize(window),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(chunk.MaxSize+(1<<20)), grpc.MaxCallSendMsgSize(chunk.MaxSize+(1<<20))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
}
