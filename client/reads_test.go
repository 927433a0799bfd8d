package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// Many OpenStored at once, of present and absent chunks: over gRPC they
// share one ReadChunks stream, and each gets its own chunk or error, byte
// for byte while buffers are pooled and reused (grpcfast_test.go).
func TestOpenStoredConcurrent(t *testing.T) {
	transports(t, func(t *testing.T, c *client.Chunks) {
		const n = 24
		ids := make([]client.ID, n)
		var ups []client.Upload
		for i := range n {
			data, id := chunkOf(100+i, 20000+i*3000)
			if i%2 == 1 {
				// Incompressible, so stored larger than the codec's
				// aliasing threshold: read into pooled buffers.
				data = make([]byte, 20000+i*3000)
				rand.NewChaCha8([32]byte{byte(i)}).Read(data)
				id = sha256.Sum256(data)
			}
			ids[i] = id
			ups = append(ups, raw(data, id))
		}
		upload(t, c, client.UploadOptions{}, ups...)
		want := map[client.ID][]byte{}
		d := c.Download(t.Context(), ids, client.DownloadOptions{})
		for range n {
			ch, err := d.Next()
			if err != nil || ch.Err != nil {
				t.Fatal(err, ch.Err)
			}
			want[ch.ID] = ch.Data
		}
		d.Close()
		var wg sync.WaitGroup
		for g := range 16 {
			wg.Go(func() {
				for i := range 3 * n {
					k := (g*7 + i) % (n + 4)
					if k >= n {
						_, absent := chunkOf(1000+k, 100)
						if _, _, err := c.OpenStored(t.Context(), absent); !errors.Is(err, apierr.ErrNotFound) {
							t.Errorf("OpenStored of an absent chunk: %v, want ErrNotFound", err)
						}
						continue
					}
					rc, size, err := c.OpenStored(t.Context(), ids[k])
					if err != nil {
						t.Error(err)
						return
					}
					got, err := io.ReadAll(rc)
					rc.Close()
					if err != nil || size != int64(len(got)) || !bytes.Equal(got, want[ids[k]]) {
						t.Errorf("chunk %d: %d bytes of %d, %v; not the stored bytes", k, len(got), size, err)
					}
				}
			})
		}
		wg.Wait()
	})
}

// authedServer serves the chunk service as cmd/chunkbridge does with a
// credentials file: each call's caller is authenticated, here from the
// "test-caller" metadata, "weak" being a reader and anything else the
// gateway (an admin). The gateway's connection sends the caller it acts
// for as a call's metadata, or per read on ReadChunks.
func authedServer(t *testing.T, svc *chunk.Service, srv chunkbridgev1.ChunkServiceServer) *grpc.ClientConn {
	t.Helper()
	caller := func(ctx context.Context) context.Context {
		md, _ := metadata.FromIncomingContext(ctx)
		p := auth.Principal{Name: "gateway", Tenant: auth.DefaultTenant, Role: auth.RoleAdmin, Domain: auth.DefaultDomain}
		if v := md.Get("test-caller"); len(v) > 0 && v[0] == "weak" {
			p.Name, p.Role = "weak", auth.RoleRead
		}
		if fwd, ok, err := auth.Forwarded(md); err == nil && ok && p.Allows(auth.Admin) {
			p = fwd
		}
		return auth.NewContext(ctx, p)
	}
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(caller(ctx), req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, ctxStream{ss, caller(ss.Context())})
		}))
	chunkbridgev1.RegisterChunkServiceServer(gs, srv)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///authed",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(auth.ForwardUnary), grpc.WithChainStreamInterceptor(auth.ForwardStream))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// weakConn makes every call of conn as the "weak" caller.
type weakConn struct{ *grpc.ClientConn }

func (w weakConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return w.ClientConn.NewStream(metadata.AppendToOutgoingContext(ctx, "test-caller", "weak"), desc, method, opts...)
}

// OpenStored reads as the caller its context carries, on both transports:
// over gRPC the stream is the gateway's own and each read names its
// caller, whose tenant's domain and role decide, as for any other call.
// Naming a caller takes an admin's stream.
func TestOpenStoredActsForTheCaller(t *testing.T) {
	svc, err := chunk.New(memory.New(), chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn := authedServer(t, svc, chunk.NewServer(svc, chunk.ServerConfig{}))
	acme := auth.NewContext(t.Context(), auth.Principal{Name: "a", Tenant: "acme", Role: auth.RoleRead, Domain: "acme"})
	globex := auth.NewContext(t.Context(), auth.Principal{Name: "g", Tenant: "globex", Role: auth.RoleWrite, Domain: "globex"})
	data, id := chunkOf(7, 30000)
	acmeWriter := auth.NewContext(t.Context(), auth.Principal{Name: "aw", Tenant: "acme", Role: auth.RoleWrite, Domain: "acme"})
	u, err := client.NewLocal(svc, 0).NewUploader(acmeWriter, client.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Put(acmeWriter, raw(data, id), func(r client.Result) {
		if r.Err != nil {
			t.Error(r.Err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []struct {
		name string
		c    *client.Chunks
	}{{"grpc", client.NewGRPC(conn)}, {"local", client.NewLocal(svc, 0)}} {
		t.Run(tr.name, func(t *testing.T) {
			if _, size, err := tr.c.OpenStored(acme, id); err != nil || size == 0 {
				t.Fatalf("acme reads its own chunk: %d bytes, %v", size, err)
			}
			for name, ctx := range map[string]context.Context{"globex": globex, "the gateway itself (default domain)": t.Context()} {
				if _, _, err := tr.c.OpenStored(ctx, id); !errors.Is(err, apierr.ErrNotFound) {
					t.Errorf("%s reads acme's chunk: %v, want ErrNotFound", name, err)
				}
			}
		})
	}
	weak := client.NewGRPC(weakConn{conn})
	if _, _, err := weak.OpenStored(acme, id); !errors.Is(err, apierr.ErrPermission) {
		t.Fatalf("a reader's stream acting for acme: %v, want ErrPermission", err)
	}
	if _, size, err := weak.OpenStored(t.Context(), id); !errors.Is(err, apierr.ErrNotFound) || size != 0 {
		t.Fatalf("a reader's stream reading for itself: %v, want ErrNotFound (its own domain)", err)
	}
}

// noReads is a chunk service that predates ReadChunks.
type noReads struct{ *chunk.Server }

func (noReads) ReadChunks(grpc.BidiStreamingServer[chunkbridgev1.ReadChunksRequest, chunkbridgev1.ReadChunksResponse]) error {
	return status.Error(codes.Unimplemented, "unknown method ReadChunks")
}

// Against a chunk service without ReadChunks, OpenStored falls back to a
// one-chunk download.
func TestOpenStoredWithoutReadChunks(t *testing.T) {
	svc, err := chunk.New(memory.New(), chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := client.NewGRPC(authedServer(t, svc, noReads{chunk.NewServer(svc, chunk.ServerConfig{})}))
	data, id := chunkOf(8, 30000)
	upload(t, c, client.UploadOptions{}, raw(data, id))
	for range 3 {
		rc, size, err := c.OpenStored(t.Context(), id)
		if err != nil || size == 0 {
			t.Fatalf("OpenStored: %d bytes, %v", size, err)
		}
		rc.Close()
	}
	if _, _, err := c.OpenStored(t.Context(), chunkOf2(9)); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("OpenStored of an absent chunk: %v, want ErrNotFound", err)
	}
}

// refusedReads is a chunk service whose ReadChunks refuses the caller.
type refusedReads struct{ *chunk.Server }

func (refusedReads) ReadChunks(grpc.BidiStreamingServer[chunkbridgev1.ReadChunksRequest, chunkbridgev1.ReadChunksResponse]) error {
	return status.Error(codes.Unauthenticated, "unauthenticated")
}

// A read stream refused as it opens fails the read with the refusal, at
// once: it does not open stream after stream until the read's context ends.
func TestOpenStoredStreamRefused(t *testing.T) {
	svc, err := chunk.New(memory.New(), chunk.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := client.NewGRPC(authedServer(t, svc, refusedReads{chunk.NewServer(svc, chunk.ServerConfig{})}))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for range 3 {
		_, _, err := c.OpenStored(ctx, chunkOf2(10))
		if status.Code(err) != codes.Unauthenticated && apierr.Code(err) != codes.Unauthenticated {
			t.Fatalf("OpenStored on a refused stream: %v, want Unauthenticated", err)
		}
	}
}

func chunkOf2(i int) client.ID {
	_, id := chunkOf(i, 100)
	return id
}
