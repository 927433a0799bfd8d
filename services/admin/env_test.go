package admin_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.RunMain(m)) }

const (
	sha256Alg = chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256
	sha512Alg = chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256
)

// env is the chunk service, catalog and AdminService on one store, with
// the catalog and admin services reached over gRPC as clients reach them.
type env struct {
	store   storage.Store
	chunks  *chunk.Service
	cat     *catalog.Server
	admin   *admin.Server
	catalog chunkbridgev1.CatalogServiceClient
	adm     chunkbridgev1.AdminServiceClient
}

func newEnv(t testing.TB, store storage.Store, cfg admin.Config) *env {
	t.Helper()
	return newEnvGuard(t, store, cfg, gcguard.Config{})
}

// newEnvGuard is newEnv with the GC guard configured as given: a name for
// the replica, hooks.
func newEnvGuard(t testing.TB, store storage.Store, cfg admin.Config, gcfg gcguard.Config) *env {
	t.Helper()
	return newEnvQuota(t, store, cfg, gcfg, nil)
}

// newEnvQuota is newEnvGuard with tenants' quotas.
func newEnvQuota(t testing.TB, store storage.Store, cfg admin.Config, gcfg gcguard.Config, q *quota.Book) *env {
	t.Helper()
	chunks, err := chunk.New(store, chunk.Config{Quota: q}, nil)
	if err != nil {
		t.Fatal(err)
	}
	gcfg.OnChange = chunks.ForgetAll
	cat, err := catalog.New(store, chunks, catalog.Config{SpoolDir: t.TempDir(), Guard: gcguard.New(store, gcfg), Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store, cfg.Chunks, cfg.Catalog, cfg.Quota = store, chunks, cat, q
	adm, err := admin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Calls run as the principal a test names with auth.ForwardKey (see
	// as), else as auth.Anonymous, the admin of a store without
	// credentials.
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(asForwarded(ctx), req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, &principalStream{ss, asForwarded(ss.Context())})
		}))
	chunkbridgev1.RegisterCatalogServiceServer(gs, cat)
	chunkbridgev1.RegisterAdminServiceServer(gs, adm)
	lis := bufconn.Listen(1 << 20)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///admin",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{store: store, chunks: chunks, cat: cat, admin: adm,
		catalog: chunkbridgev1.NewCatalogServiceClient(conn), adm: chunkbridgev1.NewAdminServiceClient(conn)}
}

// as returns ctx for calls made as p (through the env's interceptors for
// gRPC, directly for the chunk service).
func as(ctx context.Context, p auth.Principal) context.Context {
	ctx = metadata.AppendToOutgoingContext(ctx, auth.ForwardKey, p.Name+";"+p.Tenant+";"+p.Role.String()+";"+p.DedupDomain())
	return auth.NewContext(ctx, p)
}

func asForwarded(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	if p, ok, err := auth.Forwarded(md); err == nil && ok {
		return auth.NewContext(ctx, p)
	}
	return ctx
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

func memoryStore(testing.TB) storage.Store { return memory.New() }

func fsStore(t testing.TB) storage.Store {
	s, err := fs.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func minioStore(t testing.TB) storage.Store { return miniotest.SharedStore(t) }

var stores = []struct {
	name string
	open func(testing.TB) storage.Store
}{
	{"memory", memoryStore},
	{"fs", fsStore},
	{"minio", minioStore},
}

// blob is one chunk's data and id.
type blob struct {
	id   chunk.ID
	alg  chunkbridgev1.DigestAlgorithm
	data []byte
}

func sum(alg chunkbridgev1.DigestAlgorithm, data []byte) chunk.ID {
	if alg == sha256Alg {
		return sha256.Sum256(data)
	}
	return sha512.Sum512_256(data)
}

// makeBlobs returns n chunks of random data of about size bytes.
func makeBlobs(seed uint64, n, size int, alg chunkbridgev1.DigestAlgorithm) []blob {
	rng := rand.New(rand.NewPCG(seed, 99))
	out := make([]blob, n)
	for i := range out {
		data := make([]byte, size+rng.IntN(size/2+1))
		for j := range data {
			data[j] = byte(rng.Uint32() % 7) // compressible, like real data
		}
		out[i] = blob{id: sum(alg, data), alg: alg, data: data}
	}
	return out
}

// upload stores the blobs through the chunk service, 8 at a time.
func (e *env) upload(t testing.TB, blobs ...[]blob) {
	t.Helper()
	e.uploadAs(t, auth.Anonymous, blobs...)
}

// uploadAs is upload made by p.
func (e *env) uploadAs(t testing.TB, p auth.Principal, blobs ...[]blob) {
	t.Helper()
	ctx := auth.NewContext(context.Background(), p)
	var g errgroup.Group
	g.SetLimit(8)
	for _, bs := range blobs {
		for _, b := range bs {
			g.Go(func() error {
				_, err := e.chunks.Put(ctx, chunk.Upload{ID: b.id, Algorithm: b.alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: b.data})
				return err
			})
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// indexBytes is a casync blob index of the blobs, in order.
func indexBytes(blobs []blob) ([]byte, error) {
	d := caindex.SHA512_256
	if len(blobs) > 0 && blobs[0].alg == sha256Alg {
		d = caindex.SHA256
	}
	h, err := caindex.BlobHeader(d, 1, 4096, 1<<20)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, err := caindex.NewWriter(&buf, h)
	if err != nil {
		return nil, err
	}
	for _, b := range blobs {
		if err := w.Add(b.id, uint64(len(b.data))); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// putIndex publishes a casync index of the blobs through PutIndex.
func (e *env) putIndex(ctx context.Context, name string, blobs []blob) error {
	data, err := indexBytes(blobs)
	if err != nil {
		return err
	}
	stream, err := e.catalog.PutIndex(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&chunkbridgev1.PutIndexRequest{Name: name, Data: data}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	_, err = stream.CloseAndRecv()
	return err
}

func (e *env) mustPutIndex(t testing.TB, name string, blobs []blob) {
	t.Helper()
	if err := e.putIndex(t.Context(), name, blobs); err != nil {
		t.Fatalf("PutIndex %s: %v", name, err)
	}
}

// writeSnapshot commits a dynamic snapshot file of the blobs (SHA-256)
// through WriteSnapshotFile.
func (e *env) writeSnapshot(ctx context.Context, typ, id string, when time.Time, name string, blobs []blob) error {
	return e.writeSnapshotFile(ctx, &chunkbridgev1.WriteSnapshotFileRequest_Create{Type: typ, BackupId: id, Time: timestamppb.New(when), Name: name}, blobs)
}

// writeSnapshotFile commits a dynamic snapshot file of the blobs as
// create says.
func (e *env) writeSnapshotFile(ctx context.Context, create *chunkbridgev1.WriteSnapshotFileRequest_Create, blobs []blob) error {
	stream, err := e.catalog.WriteSnapshotFile(ctx)
	if err != nil {
		return err
	}
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{Create: create}})
	var entries []*chunkbridgev1.WriteSnapshotFileRequest_Entry
	var off int64
	for _, b := range blobs {
		entries = append(entries, &chunkbridgev1.WriteSnapshotFileRequest_Entry{Offset: off, Digest: b.id.String()})
		off += int64(len(b.data))
	}
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Entries_{Entries: &chunkbridgev1.WriteSnapshotFileRequest_Entries{Entries: entries}}})
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Commit_{Commit: &chunkbridgev1.WriteSnapshotFileRequest_Commit{}}})
	stream.CloseSend()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if r := resp.GetRefused(); r != nil {
			return fmt.Errorf("entry refused: %s", r.GetMessage())
		}
		if resp.GetCommitted() != nil {
			return nil
		}
	}
}

func (e *env) mustWriteSnapshot(t testing.TB, typ, id string, when time.Time, name string, blobs []blob) {
	t.Helper()
	if err := e.writeSnapshot(t.Context(), typ, id, when, name, blobs); err != nil {
		t.Fatalf("snapshot %s/%s/%s: %v", typ, id, name, err)
	}
}

func (e *env) gc(t testing.TB, grace time.Duration, dryRun bool) *chunkbridgev1.GCReport {
	t.Helper()
	resp, err := e.adm.RunGC(t.Context(), &chunkbridgev1.RunGCRequest{Grace: durationpb.New(grace), DryRun: dryRun})
	if err != nil {
		t.Fatalf("RunGC: %v", err)
	}
	return resp.Report
}

// verify runs Verify and returns its report and progress messages.
func (e *env) verify(t testing.TB, req *chunkbridgev1.VerifyRequest) (*chunkbridgev1.VerifyReport, []*chunkbridgev1.VerifyProgress) {
	t.Helper()
	stream, err := e.adm.Verify(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	var progress []*chunkbridgev1.VerifyProgress
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if p := resp.GetProgress(); p != nil {
			progress = append(progress, p)
		}
		if r := resp.GetReport(); r != nil {
			if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the report: %v, want the end of the stream", err)
			}
			return r, progress
		}
	}
}

// exists asks storage, not the presence cache.
func (e *env) exists(t testing.TB, id chunk.ID) bool {
	t.Helper()
	_, err := e.store.Stat(t.Context(), id.Key())
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// readsBack gets the chunk through the chunk service, decoded and
// re-verified.
func (e *env) readsBack(t testing.TB, b blob) {
	t.Helper()
	c, err := e.chunks.Get(t.Context(), b.id, true)
	if err != nil {
		t.Fatalf("chunk %s does not read back: %v", b.id, err)
	}
	if !bytes.Equal(c.Data, b.data) {
		t.Fatalf("chunk %s reads back different data", b.id)
	}
}

func concat(parts ...[]blob) []blob {
	var out []blob
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
