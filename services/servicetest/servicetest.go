// Package servicetest runs the chunk service and the catalog in-process for
// tests of the code above them: real gRPC over an in-memory connection, on
// any storage.Store (usually memory.New()).
package servicetest

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// maxMessage fits a 16 MiB chunk and its envelope.
const maxMessage = chunk.MaxSize + 1<<20

// Services are the running services and a client connection to them.
type Services struct {
	Chunks  *chunk.Service
	Catalog *catalog.Server
	Conn    *grpc.ClientConn
}

// ChunkClient and CatalogClient are gRPC clients on Conn.
func (s *Services) ChunkClient() chunkbridgev1.ChunkServiceClient {
	return chunkbridgev1.NewChunkServiceClient(s.Conn)
}

func (s *Services) CatalogClient() chunkbridgev1.CatalogServiceClient {
	return chunkbridgev1.NewCatalogServiceClient(s.Conn)
}

// Start serves ChunkService and CatalogService on store until the test
// ends. The catalog spools in a temporary directory of the test.
func Start(t testing.TB, store storage.Store, chunkCfg chunk.Config, catalogCfg catalog.Config) *Services {
	t.Helper()
	svc, err := chunk.New(store, chunkCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	catalogCfg.SpoolDir = t.TempDir()
	cat, err := catalog.New(store, svc, catalogCfg)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage))
	chunkbridgev1.RegisterChunkServiceServer(gs, chunk.NewServer(svc, chunk.ServerConfig{}))
	chunkbridgev1.RegisterCatalogServiceServer(gs, cat)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///servicetest",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &Services{Chunks: svc, Catalog: cat, Conn: conn}
}

// Server is a gateway's server: it serves a listener until shut down.
type Server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// Serve runs srv on a loopback port until the test ends, and returns the
// address.
func Serve(t testing.TB, srv Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// Recv returns what arrives on c, failing the test if nothing does within
// a generous time (a hook that should have fired never did).
func Recv[T any](t testing.TB, c <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s", what)
		panic("unreachable")
	}
}
