package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/s3"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

type testChunk struct {
	data []byte
	req  *chunkbridgev1.UploadChunksRequest
}

// makeChunks returns n chunks of mixed sizes, algorithms and encodings.
func makeChunks(t *testing.T, seed uint64, n int) []testChunk {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	zenc, _ := zstd.NewWriter(nil)
	algs := []chunkbridgev1.DigestAlgorithm{chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256}
	encs := []chunkbridgev1.Encoding{chunkbridgev1.Encoding_ENCODING_RAW, chunkbridgev1.Encoding_ENCODING_ZSTD, chunkbridgev1.Encoding_ENCODING_XZ, chunkbridgev1.Encoding_ENCODING_GZIP}
	out := make([]testChunk, n)
	for i := range out {
		size := 1 + rng.IntN(64<<10)
		if i%97 == 0 {
			size = 1<<20 + rng.IntN(1<<20) // some large chunks
		}
		data := make([]byte, size)
		for j := 0; j < size/2; j++ { // half random, half zeros
			data[j] = byte(rng.Uint32())
		}
		alg, enc := algs[i%2], encs[(i/2)%4]
		var id string
		if alg == algs[0] {
			s := sha256.Sum256(data)
			id = hex.EncodeToString(s[:])
		} else {
			s := sha512.Sum512_256(data)
			id = hex.EncodeToString(s[:])
		}
		payload := data
		var buf bytes.Buffer
		switch enc {
		case chunkbridgev1.Encoding_ENCODING_ZSTD:
			payload = zenc.EncodeAll(data, nil)
		case chunkbridgev1.Encoding_ENCODING_XZ:
			w, _ := xz.NewWriter(&buf)
			w.Write(data)
			w.Close()
			payload = buf.Bytes()
		case chunkbridgev1.Encoding_ENCODING_GZIP:
			w := gzip.NewWriter(&buf)
			w.Write(data)
			w.Close()
			payload = buf.Bytes()
		}
		out[i] = testChunk{data: data, req: &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: alg, Encoding: enc, Data: payload}}
	}
	return out
}

// uploadAll sends chunks on one stream and returns the acks.
func uploadAll(ctx context.Context, client chunkbridgev1.ChunkServiceClient, chunks []testChunk) ([]*chunkbridgev1.UploadChunksResponse, error) {
	stream, err := client.UploadChunks(ctx)
	if err != nil {
		return nil, err
	}
	var g errgroup.Group
	g.Go(func() error {
		for _, c := range chunks {
			if err := stream.Send(c.req); err != nil {
				return nil // the receive side reports why
			}
		}
		return stream.CloseSend()
	})
	var acks []*chunkbridgev1.UploadChunksResponse
	for {
		ack, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return acks, err
		}
		acks = append(acks, ack)
	}
	return acks, g.Wait()
}

func TestServeChunkOnMinIO(t *testing.T) {
	srv := miniotest.Shared(t)
	bucket := miniotest.NewBucketName()
	p := start(t, minioEnv(srv), "serve", "chunk", "--store", "s3://"+bucket+"/store")
	conn := p.conn(t)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
	client := chunkbridgev1.NewChunkServiceClient(conn)
	ctx := t.Context()

	chunks := makeChunks(t, 1, 1000)
	// Four streams at once, 250 chunks each.
	var g errgroup.Group
	for s := range 4 {
		part := chunks[s*250 : (s+1)*250]
		g.Go(func() error {
			acks, err := uploadAll(ctx, client, part)
			if err != nil {
				return err
			}
			for i, ack := range acks {
				if ack.Id != part[i].req.Id || ack.Code != 0 || !ack.Created {
					return fmt.Errorf("stream %d ack %d: %+v", s, i, ack)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}

	ids := make([]string, len(chunks))
	for i, c := range chunks {
		ids[i] = c.req.Id
	}
	missing, err := client.FindMissingChunks(ctx, &chunkbridgev1.FindMissingChunksRequest{Ids: ids})
	if err != nil || len(missing.Missing) != 0 {
		t.Fatalf("after upload FindMissing = %d missing, %v", len(missing.GetMissing()), err)
	}

	// Raw download, in request order, compared byte for byte.
	stream, err := client.DownloadChunks(ctx, &chunkbridgev1.DownloadChunksRequest{Ids: ids, Encoding: chunkbridgev1.Encoding_ENCODING_RAW})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range chunks {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("download %d: %v", i, err)
		}
		if r.Id != c.req.Id || r.Code != 0 || !bytes.Equal(r.Data, c.data) || r.Algorithm != c.req.Algorithm {
			t.Fatalf("download %d: id %s code %d, %d bytes: differs from upload", i, r.Id, r.Code, len(r.Data))
		}
	}

	// The bucket holds exactly these chunks, at casync's keys under the prefix.
	cfg := srv.Config()
	cfg.Bucket, cfg.Prefix = bucket, "store"
	st, err := s3.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := st.List(ctx, "chunks/", func(i storage.Info) error {
		n++
		if !strings.HasSuffix(i.Key, ".cacnk") || i.Key[7:11] != i.Key[12:16] {
			return fmt.Errorf("unexpected key %s", i.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != len(chunks) {
		t.Fatalf("bucket holds %d chunks, want %d", n, len(chunks))
	}

	// Uploading the same chunks again writes nothing new.
	acks, err := uploadAll(ctx, client, chunks[:100])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acks {
		if a.Code != 0 || a.Created {
			t.Fatalf("re-upload: %+v, want OK, not created", a)
		}
	}
}

// MinIO dies in the middle of uploads: the service answers Unavailable,
// reports NOT_SERVING, recovers when MinIO is back, and the bucket never
// holds a partial or unverifiable object.
func TestMinIOKilledDuringUploads(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := miniotest.NewBucketName()
	p := start(t, minioEnv(srv), "serve", "chunk", "--store", "s3://"+bucket, "--health-interval", "100ms")
	conn := p.conn(t)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
	client := chunkbridgev1.NewChunkServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	chunks := makeChunks(t, 2, 400)
	var mu sync.Mutex
	codesSeen := map[codes.Code]int{}
	unavailable := make(chan struct{})
	var once sync.Once
	uploader := func(part []testChunk) error {
		// Upload in small batches until every chunk is acknowledged OK,
		// retrying those refused as Unavailable, as a client would.
		pending := part
		for len(pending) > 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			batch := pending[:min(10, len(pending))]
			acks, err := uploadAll(ctx, client, batch)
			if err != nil {
				return err
			}
			var retry []testChunk
			for i, a := range acks {
				mu.Lock()
				codesSeen[codes.Code(a.Code)]++
				mu.Unlock()
				switch codes.Code(a.Code) {
				case codes.OK:
				case codes.Unavailable:
					once.Do(func() { close(unavailable) })
					retry = append(retry, batch[i])
				default:
					return fmt.Errorf("chunk %s: %v %s", a.Id, codes.Code(a.Code), a.Message)
				}
			}
			pending = append(retry, pending[len(batch):]...)
			if len(retry) > 0 {
				select { // the outage is still on: wait for health to return
				case <-ctx.Done():
				case <-healthy(ctx, conn):
				}
			}
		}
		return nil
	}

	first, rest := chunks[:100], chunks[100:]
	if err := uploader(first); err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	g.Go(func() error { return uploader(rest) })
	srv.Kill()
	waitHealth(t, conn, healthpb.HealthCheckResponse_NOT_SERVING)
	select {
	case <-unavailable:
	case <-ctx.Done():
		t.Fatal("no upload was refused as Unavailable while MinIO was down")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("ack codes: %v", codesSeen)

	// Every object in the bucket decodes and hashes to its key, and every
	// chunk is there.
	st, err := s3.Open(ctx, s3.Config{Endpoint: srv.Endpoint, Bucket: bucket, Insecure: true, AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, c := range chunks {
		want[c.req.Id] = true
	}
	dec, _ := zstd.NewReader(nil)
	found := 0
	err = st.List(ctx, "", func(i storage.Info) error {
		id := strings.TrimSuffix(i.Key[strings.LastIndexByte(i.Key, '/')+1:], ".cacnk")
		rc, info, err := st.Get(ctx, i.Key)
		if err != nil {
			return err
		}
		stored, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		data, err := dec.DecodeAll(stored, nil)
		if err != nil {
			return fmt.Errorf("object %s is not a whole zstd frame: %w", i.Key, err)
		}
		var sum [32]byte
		if info.Metadata["algorithm"] == "sha256" {
			sum = sha256.Sum256(data)
		} else {
			sum = sha512.Sum512_256(data)
		}
		if hex.EncodeToString(sum[:]) != id || !want[id] {
			return fmt.Errorf("object %s does not hash to its id", i.Key)
		}
		found++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found != len(chunks) {
		t.Fatalf("bucket holds %d verified chunks, want %d", found, len(chunks))
	}
}

// healthy returns a channel closed when the server reports SERVING.
func healthy(ctx context.Context, conn *grpc.ClientConn) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return
		}
		for {
			r, err := w.Recv()
			if err != nil || r.Status == healthpb.HealthCheckResponse_SERVING {
				return
			}
		}
	}()
	return ch
}

func TestS3MakeBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	srv := miniotest.Shared(t)
	bucket := miniotest.NewBucketName()
	cmd := exec.Command(binary, "s3", "mkbucket", "s3://"+bucket, "--s3-endpoint", srv.Endpoint, "--s3-insecure")
	cmd.Env = append(os.Environ(), minioEnv(srv)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("s3 mkbucket: %v\n%s", err, out)
	}
	cfg := srv.Config()
	cfg.Bucket = bucket
	st, err := s3.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	// An unreachable endpoint fails with the reason.
	cmd = exec.Command(binary, "s3", "mkbucket", "s3://"+bucket, "--s3-endpoint", "127.0.0.1:1", "--s3-insecure")
	cmd.Env = append(os.Environ(), minioEnv(srv)...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "unavailable") {
		t.Fatalf("s3 mkbucket against a closed port: %v %s", err, out)
	}
}

func TestServeAllREST(t *testing.T) {
	store := t.TempDir()
	// The store comes from the environment, as in a Kubernetes manifest.
	p := start(t, []string{"CHUNKBRIDGE_STORE=" + store}, "serve", "all")
	conn := p.conn(t)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
	base := "http://" + p.http

	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, readAll(t, resp.Body)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}

	chunks := makeChunks(t, 3, 3)
	id := chunks[0].req.Id
	if code, body := get("/v1/chunks/" + id); code != 404 || !strings.Contains(body, id) || strings.Contains(body, store) {
		t.Fatalf("GET missing chunk = %d %s; want 404 naming the id and not the server's path", code, body)
	}
	if _, err := uploadAll(t.Context(), chunkbridgev1.NewChunkServiceClient(conn), chunks[:1]); err != nil {
		t.Fatal(err)
	}

	body, _ := json.Marshal(map[string][]string{"ids": {chunks[0].req.Id, chunks[1].req.Id, chunks[2].req.Id}})
	resp, err := http.Post(base+"/v1/chunks:findMissing", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var fm struct{ Missing []string }
	json.NewDecoder(resp.Body).Decode(&fm)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(fm.Missing) != 2 || fm.Missing[0] != chunks[1].req.Id || fm.Missing[1] != chunks[2].req.Id {
		t.Fatalf("findMissing = %d %v", resp.StatusCode, fm.Missing)
	}
	resp, err = http.Post(base+"/v1/chunks:findMissing", "application/json", strings.NewReader(`{"ids":["nothex"]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("findMissing with a bad id = %d, want 400", resp.StatusCode)
	}

	code, stat := get("/v1/chunks/" + id)
	var info struct {
		ID, Algorithm    string
		Size, StoredSize string
	}
	json.Unmarshal([]byte(stat), &info)
	if code != 200 || info.ID != id || info.Algorithm != chunks[0].req.Algorithm.String() || info.Size != fmt.Sprint(len(chunks[0].data)) {
		t.Fatalf("GET chunk = %d %s", code, stat)
	}

	code, stats := get("/v1/stats")
	var s struct{ ChunkCount, ChunksWritten string }
	json.Unmarshal([]byte(stats), &s)
	if code != 200 || s.ChunkCount != "1" || s.ChunksWritten != "1" {
		t.Fatalf("GET /v1/stats = %d %s", code, stats)
	}

	code, doc := get("/openapi.json")
	var openapi struct {
		Info  struct{ Title, Version string }
		Paths map[string]any
	}
	if err := json.Unmarshal([]byte(doc), &openapi); code != 200 || err != nil {
		t.Fatalf("/openapi.json = %d, %v", code, err)
	}
	// Title and version are the build's, not the generator's defaults.
	out, err := exec.Command(binary, "version", "--json").Output()
	var build struct {
		Version, Commit, GoVersion string
		Dirty                      bool
	}
	if err != nil || json.Unmarshal(out, &build) != nil || build.Version == "" || build.GoVersion == "" {
		t.Fatalf("version --json: %v\n%s", err, out)
	}
	if openapi.Info.Title != "chunkbridge" || openapi.Info.Version != build.Version {
		t.Errorf("/openapi.json info = %+v, want title chunkbridge, version %s", openapi.Info, build.Version)
	}
	for _, path := range []string{"/v1/chunks:findMissing", "/v1/chunks/{id}", "/v1/stats"} {
		if openapi.Paths[path] == nil {
			t.Errorf("/openapi.json lacks %s", path)
		}
	}

	code, metrics := get("/metrics")
	if build.Dirty {
		build.Commit += "-dirty"
	}
	buildInfo := fmt.Sprintf(`chunkbridge_build_info{commit="%s",goversion="%s",version="%s"} 1`, build.Commit, build.GoVersion, build.Version)
	for _, series := range []string{`chunkbridge_chunk_uploads_total{result="created"} 1`, "grpc_server_handled_total", buildInfo} {
		if code != 200 || !strings.Contains(metrics, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
}

// The --http-* limits reach the HTTP server: a JSON body over
// --http-max-json-body (here from the environment) is 413, and a body
// that stalls is cut after --http-body-timeout with 408.
func TestServeHTTPLimits(t *testing.T) {
	p := start(t, []string{"CHUNKBRIDGE_HTTP_MAX_JSON_BODY=1024"}, "serve", "all", "--store", t.TempDir(),
		"--http-body-timeout", "300ms", "--http-min-rate", "1024")
	base := "http://" + p.http
	big := `{"ids":["` + strings.Repeat("a", 2048) + `"]}`
	resp, err := http.Post(base+"/v1/chunks:findMissing", "application/json", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	msg := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "1024 bytes") {
		t.Fatalf("POST %d-byte JSON with --http-max-json-body 1024 = %d %s, want 413", len(big), resp.StatusCode, msg)
	}

	conn, err := net.Dial("tcp", p.http)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Minute)) // fail, not hang, if never cut
	id := strings.Repeat("ab", 32)
	fmt.Fprintf(conn, "PUT /casync/chunks/%s/%s.cacnk HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nx", id[:4], id)
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("stalled body: %v, want a 408 response", err)
	}
	msg = readAll(t, resp.Body)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body = %d %s, want 408", resp.StatusCode, msg)
	}
	// The 408 may reach the client before the record reaches the log.
	if !p.waitLog("request body cut") {
		t.Errorf("no log record of the cut body:\n%s", p.logs())
	}
}
