package chunk_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/internal/grpcfast"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
	"github.com/chunkbridge/chunkbridge/storage/s3"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// The services run with the gRPC buffers and codec of the binary.
func init() { grpcfast.Install() }

func TestMain(m *testing.M) {
	code := miniotest.RunMain(m)
	printBenchTable()
	os.Exit(code)
}

// results holds each benchmark's MB/s from its final (largest) run, for the
// table printed after all benchmarks.
var results sync.Map

func record(b *testing.B, bytesPerOp int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		results.Store(strings.TrimPrefix(b.Name(), "Benchmark"), float64(bytesPerOp)*float64(b.N)/s/1e6)
	}
}

// printBenchTable prints MB/s and each figure's ratio to the single-core
// SHA-256 + zstd limit of the same chunk size, measured in the same run.
func printBenchTable() {
	var names []string
	results.Range(func(k, _ any) bool { names = append(names, k.(string)); return true })
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	fmt.Printf("\n| benchmark | MB/s | ratio to limit |\n|---|---:|---:|\n")
	for _, n := range names {
		v, _ := results.Load(n)
		size := n[strings.LastIndexByte(n, '/')+1:]
		ratio := "n/a"
		if l, ok := results.Load("Limit/sha256+zstd/" + size); ok {
			ratio = fmt.Sprintf("%.2f×", v.(float64)/l.(float64))
		}
		fmt.Printf("| %s | %.0f | %s |\n", n, v.(float64), ratio)
	}
	fmt.Printf("\nGOMAXPROCS=%d, %s/%s; limit = one core hashing (SHA-256) and compressing (zstd, the service's level) the same data\n",
		runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
}

var sizes = []struct {
	name string
	n    int
}{{"64KiB", 64 << 10}, {"4MiB", 4 << 20}}

// benchData is moderately compressible: each 4 KiB block is half random
// bytes and half a repeated text, roughly a 2:1 zstd ratio like binaries.
func benchData(n int) []byte {
	b := make([]byte, n)
	text := []byte("the quick brown fox jumps over the lazy dog; ")
	for off := 0; off < n; off += 4096 {
		end := min(off+4096, n)
		mid := min(off+2048, end)
		rand.Read(b[off:mid])
		for i := mid; i < end; i++ {
			b[i] = text[(i-mid)%len(text)]
		}
	}
	return b
}

// BenchmarkLimit is the baseline: what one core can do per chunk before any
// storage, gRPC or concurrency: SHA-256 plus zstd compression.
func BenchmarkLimit(b *testing.B) {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(true), zstd.WithEncoderConcurrency(1))
	for _, sz := range sizes {
		b.Run("sha256+zstd/"+sz.name, func(b *testing.B) {
			data := benchData(sz.n)
			dst := make([]byte, 0, sz.n)
			b.SetBytes(int64(sz.n))
			b.ResetTimer()
			for range b.N {
				_ = sha256.Sum256(data)
				dst = enc.EncodeAll(data, dst[:0])
			}
			b.StopTimer()
			record(b, sz.n)
		})
	}
}

type benchStore struct {
	name string
	open func(b *testing.B) storage.Store
}

func benchStores() []benchStore {
	return []benchStore{
		{"fs", func(b *testing.B) storage.Store {
			s, err := fs.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
		{"minio", func(b *testing.B) storage.Store {
			s, err := s3.Open(context.Background(), miniotest.Shared(b).Config())
			if err != nil {
				b.Fatal(err)
			}
			return s
		}},
	}
}

// grpcClient serves svc over an in-memory gRPC connection, so the figures
// include protobuf and HTTP/2 framing as a gateway would see them.
func grpcClient(b *testing.B, svc *chunk.Service) chunkbridgev1.ChunkServiceClient {
	lis := bufconn.Listen(4 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(chunk.MaxSize+(1<<20)), grpc.MaxSendMsgSize(chunk.MaxSize+(1<<20)))
	chunkbridgev1.RegisterChunkServiceServer(srv, chunk.NewServer(svc, chunk.ServerConfig{}))
	go srv.Serve(lis)
	b.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bench",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(chunk.MaxSize+(1<<20)), grpc.MaxCallSendMsgSize(chunk.MaxSize+(1<<20))))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return chunkbridgev1.NewChunkServiceClient(conn)
}

// variant makes chunk i of a series: the base data with i in its first
// eight bytes, so every chunk is new to the store.
func variant(base []byte, i int) []byte {
	binary.LittleEndian.PutUint64(base, uint64(i)+uint64(time.Now().UnixNano()))
	return base
}

// BenchmarkPut uploads new raw chunks on one stream: decode, SHA-256,
// zstd, write (fsync on fs, PUT on MinIO), acknowledge.
func BenchmarkPut(b *testing.B) {
	for _, st := range benchStores() {
		for _, sz := range sizes {
			b.Run(st.name+"/"+sz.name, func(b *testing.B) {
				svc, err := chunk.New(st.open(b), chunk.Config{}, nil)
				if err != nil {
					b.Fatal(err)
				}
				client := grpcClient(b, svc)
				base := benchData(sz.n)
				b.StopTimer()
				reqs := make([]*chunkbridgev1.UploadChunksRequest, b.N)
				for i := range reqs { // hashing the client's side is not timed
					data := append([]byte(nil), variant(base, i)...)
					sum := sha256.Sum256(data)
					reqs[i] = &chunkbridgev1.UploadChunksRequest{Id: hex.EncodeToString(sum[:]), Algorithm: sha256Alg, Encoding: rawEnc, Data: data}
				}
				b.SetBytes(int64(sz.n))
				b.StartTimer()
				stream, err := client.UploadChunks(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				go func() {
					for i, r := range reqs {
						stream.Send(r)
						reqs[i] = nil // let sent chunks be collected
					}
					stream.CloseSend()
				}()
				for range b.N {
					ack, err := stream.Recv()
					if err != nil || ack.Code != 0 || !ack.Created {
						b.Fatalf("ack %v %v", ack, err)
					}
				}
				if _, err := stream.Recv(); err != io.EOF {
					b.Fatal(err)
				}
				b.StopTimer()
				record(b, sz.n)
			})
		}
	}
}

// BenchmarkGet downloads stored chunks (the zstd bytes casync receives) and
// raw (decoded and re-verified, what PMXBCKUP receives).
func BenchmarkGet(b *testing.B) {
	for _, form := range []chunkbridgev1.Encoding{zstdEnc, rawEnc} {
		for _, st := range benchStores() {
			for _, sz := range sizes {
				name := strings.ToLower(strings.TrimPrefix(form.String(), "ENCODING_"))
				b.Run(name+"/"+st.name+"/"+sz.name, func(b *testing.B) {
					svc, err := chunk.New(st.open(b), chunk.Config{PresenceCacheSize: -1}, nil)
					if err != nil {
						b.Fatal(err)
					}
					client := grpcClient(b, svc)
					base := benchData(sz.n)
					const distinct = 32
					var ids []string
					for i := range distinct {
						data := variant(base, i)
						sum := sha256.Sum256(data)
						id := hex.EncodeToString(sum[:])
						if _, err := svc.Put(context.Background(), chunk.Upload{ID: mustID(b, id), Algorithm: sha256Alg, Encoding: rawEnc, Data: data}); err != nil {
							b.Fatal(err)
						}
						ids = append(ids, id)
					}
					want := make([]string, b.N)
					for i := range want {
						want[i] = ids[i%distinct]
					}
					b.SetBytes(int64(sz.n))
					b.ResetTimer()
					for off := 0; off < b.N; off += chunk.MaxIDsPerCall {
						stream, err := client.DownloadChunks(context.Background(), &chunkbridgev1.DownloadChunksRequest{Ids: want[off:min(b.N, off+chunk.MaxIDsPerCall)], Encoding: form})
						if err != nil {
							b.Fatal(err)
						}
						for {
							r, err := stream.Recv()
							if err == io.EOF {
								break
							}
							if err != nil || r.Code != 0 {
								b.Fatalf("download: %v %v", r, err)
							}
						}
					}
					b.StopTimer()
					record(b, sz.n)
				})
			}
		}
	}
}

// BenchmarkOpenStoredAs opens and reads stored chunks (the casync HTTP
// store's GET) as an admin, as a tenant alone in its dedup domain, and as
// a tenant of a shared domain, whose every read passes the serving rule
// (a lookup among the ids its files reference): the cost of tenants on the
// read path, as a ratio to the admin's.
func BenchmarkOpenStoredAs(b *testing.B) {
	store := memory.New()
	svc, err := chunk.New(store, chunk.Config{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	alone := auth.Principal{Name: "a", Tenant: "alone", Role: auth.RoleWrite, Domain: "solo"}
	shared := auth.Principal{Name: "s", Tenant: "s1", Role: auth.RoleWrite, Domain: "team"}
	neighbour := auth.Principal{Name: "n", Tenant: "s2", Role: auth.RoleWrite, Domain: "team"}
	base := benchData(64 << 10)
	const distinct = 1024
	ids := map[string][]chunk.ID{}
	for _, p := range []auth.Principal{alone, shared, neighbour} {
		ctx := auth.NewContext(context.Background(), p)
		for i := range distinct {
			data := variant(base, i)
			id := chunk.ID(sha256.Sum256(data))
			if _, err := svc.Put(ctx, chunk.Upload{ID: id, Algorithm: sha256Alg, Encoding: rawEnc, Data: data}); err != nil {
				b.Fatal(err)
			}
			ids[p.Tenant] = append(ids[p.Tenant], id)
		}
	}
	// The tenant's files reference its chunks; nothing it uploaded is
	// remembered apart (a restart): every read is a lookup.
	svc.SetReferences(func(_ context.Context, tenant string, each func(chunk.ID) error) error {
		for _, id := range ids[tenant] {
			if err := each(id); err != nil {
				return err
			}
		}
		return nil
	})
	for _, c := range []struct {
		name string
		p    auth.Principal
		ids  []chunk.ID
	}{{"admin", auth.Anonymous, ids["alone"]}, {"tenant-alone", alone, ids["alone"]}, {"tenant-shared-domain", shared, ids["s1"]}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := auth.NewContext(context.Background(), c.p)
			if c.p.Role == auth.RoleAdmin {
				ctx = chunk.InDomain(context.Background(), "solo")
			}
			buf := make([]byte, 128<<10)
			b.SetBytes(64 << 10)
			b.ResetTimer()
			for i := range b.N {
				rc, _, err := svc.OpenStored(ctx, c.ids[i%distinct])
				if err != nil {
					b.Fatal(err)
				}
				for {
					if _, err := rc.Read(buf); err != nil {
						break
					}
				}
				rc.Close()
			}
		})
	}
}
