package chunk_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

const (
	sha256Alg = chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256
	sha512Alg = chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256
	rawEnc    = chunkbridgev1.Encoding_ENCODING_RAW
	zstdEnc   = chunkbridgev1.Encoding_ENCODING_ZSTD
	xzEnc     = chunkbridgev1.Encoding_ENCODING_XZ
	gzipEnc   = chunkbridgev1.Encoding_ENCODING_GZIP
)

// countingStore counts writes and can hold them at a gate.
type countingStore struct {
	storage.Store
	puts     atomic.Int64
	inflight atomic.Int64
	maxSeen  atomic.Int64
	entered  chan struct{} // nil: no gate
	release  chan struct{}
}

func (c *countingStore) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64, meta storage.Metadata) (bool, error) {
	c.puts.Add(1)
	n := c.inflight.Add(1)
	defer c.inflight.Add(-1)
	for {
		m := c.maxSeen.Load()
		if n <= m || c.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if c.entered != nil {
		c.entered <- struct{}{}
		<-c.release
	}
	return c.Store.PutIfAbsent(ctx, key, r, size, meta)
}

type fixture struct {
	store  *countingStore
	svc    *chunk.Service
	client chunkbridgev1.ChunkServiceClient
}

func newFixture(t *testing.T, cfg chunk.Config) *fixture {
	t.Helper()
	st := &countingStore{Store: memory.New()}
	svcs := servicetest.Start(t, st, cfg, catalog.Config{})
	return &fixture{store: st, svc: svcs.Chunks, client: svcs.ChunkClient()}
}

func randomData(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b[:n/2]) // half random, half zeros: compressible but unique
	return b
}

func idOf(alg chunkbridgev1.DigestAlgorithm, data []byte) string {
	if alg == sha256Alg {
		s := sha256.Sum256(data)
		return hex.EncodeToString(s[:])
	}
	s := sha512.Sum512_256(data)
	return hex.EncodeToString(s[:])
}

func encode(t testing.TB, enc chunkbridgev1.Encoding, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch enc {
	case rawEnc:
		return data
	case zstdEnc:
		e, _ := zstd.NewWriter(nil)
		return e.EncodeAll(data, nil)
	case xzEnc:
		w, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case gzipEnc:
		w := gzip.NewWriter(&buf)
		w.Write(data)
		w.Close()
	}
	return buf.Bytes()
}

// upload sends reqs on one stream and returns the acks.
func (f *fixture) upload(t *testing.T, reqs ...*chunkbridgev1.UploadChunksRequest) []*chunkbridgev1.UploadChunksResponse {
	t.Helper()
	stream, err := f.client.UploadChunks(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		for _, r := range reqs {
			if err := stream.Send(r); err != nil {
				errc <- err
				return
			}
		}
		errc <- stream.CloseSend()
	}()
	var acks []*chunkbridgev1.UploadChunksResponse
	for {
		ack, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("receive ack: %v", err)
		}
		acks = append(acks, ack)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(acks) != len(reqs) {
		t.Fatalf("%d acks for %d chunks", len(acks), len(reqs))
	}
	return acks
}

func TestUploadEveryEncodingAndAlgorithm(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	var reqs []*chunkbridgev1.UploadChunksRequest
	var datas [][]byte
	for _, alg := range []chunkbridgev1.DigestAlgorithm{sha256Alg, sha512Alg} {
		for _, enc := range []chunkbridgev1.Encoding{rawEnc, zstdEnc, xzEnc, gzipEnc} {
			data := randomData(t, 70_000)
			datas = append(datas, data)
			reqs = append(reqs, &chunkbridgev1.UploadChunksRequest{Id: idOf(alg, data), Algorithm: alg, Encoding: enc, Data: encode(t, enc, data)})
		}
	}
	for i, ack := range f.upload(t, reqs...) {
		if ack.Id != reqs[i].Id || ack.Code != 0 || !ack.Created {
			t.Fatalf("ack %d = %+v, want created %s", i, ack, reqs[i].Id)
		}
	}
	// Stored as zstd with algorithm and size recorded; stat agrees.
	dec, _ := zstd.NewReader(nil)
	for i, r := range reqs {
		id, _ := chunk.ParseID(r.Id)
		rc, info, err := f.store.Get(t.Context(), id.Key())
		if err != nil {
			t.Fatal(err)
		}
		stored, _ := io.ReadAll(rc)
		plain, err := dec.DecodeAll(stored, nil)
		if err != nil || !bytes.Equal(plain, datas[i]) {
			t.Fatalf("chunk %d: stored object is not zstd of the data (%v)", i, err)
		}
		if r.Encoding == zstdEnc && !bytes.Equal(stored, r.Data) {
			t.Fatalf("chunk %d: an incoming zstd payload was re-encoded", i)
		}
		if info.Metadata["size"] != fmt.Sprint(len(datas[i])) {
			t.Fatalf("chunk %d: metadata %v", i, info.Metadata)
		}
		st, err := f.client.StatChunk(t.Context(), &chunkbridgev1.StatChunkRequest{Id: r.Id})
		if err != nil {
			t.Fatal(err)
		}
		if st.Chunk.Algorithm != r.Algorithm || st.Chunk.Size != int64(len(datas[i])) || st.Chunk.StoredSize != int64(len(stored)) {
			t.Fatalf("chunk %d: stat = %+v", i, st.Chunk)
		}
	}
}

func TestDuplicateCostsNoWrite(t *testing.T) {
	for _, cache := range []int{0, -1} { // with and without the presence cache
		t.Run(fmt.Sprintf("cache=%d", cache), func(t *testing.T) {
			f := newFixture(t, chunk.Config{PresenceCacheSize: cache})
			data := randomData(t, 1000)
			req := &chunkbridgev1.UploadChunksRequest{Id: idOf(sha256Alg, data), Algorithm: sha256Alg, Encoding: rawEnc, Data: data}
			if ack := f.upload(t, req)[0]; !ack.Created {
				t.Fatalf("first upload: %+v", ack)
			}
			before := f.store.puts.Load()
			ack := f.upload(t, req)[0]
			if ack.Code != 0 || ack.Created {
				t.Fatalf("duplicate upload: %+v, want OK and not created", ack)
			}
			if cache == 0 && f.store.puts.Load() != before {
				t.Fatalf("a duplicate reached the store with the presence cache on")
			}
			if c := f.svc.Counters(); c.Written != 1 || c.Deduplicated != 1 {
				t.Fatalf("counters %+v", c)
			}
		})
	}
}

func TestBadUploadsAreRefusedAndNothingStored(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := randomData(t, 5000)
	good := idOf(sha256Alg, data)
	bomb := encode(t, zstdEnc, make([]byte, chunk.MaxSize+1))
	cases := []struct {
		name string
		req  *chunkbridgev1.UploadChunksRequest
		code codes.Code
	}{
		{"digest mismatch", &chunkbridgev1.UploadChunksRequest{Id: idOf(sha256Alg, []byte("other")), Algorithm: sha256Alg, Encoding: rawEnc, Data: data}, codes.DataLoss},
		{"wrong algorithm", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha512Alg, Encoding: rawEnc, Data: data}, codes.DataLoss},
		{"unknown algorithm", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: 9, Encoding: rawEnc, Data: data}, codes.InvalidArgument},
		{"unspecified algorithm", &chunkbridgev1.UploadChunksRequest{Id: good, Encoding: rawEnc, Data: data}, codes.InvalidArgument},
		{"unknown encoding", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: 7, Data: data}, codes.InvalidArgument},
		{"short id", &chunkbridgev1.UploadChunksRequest{Id: good[:62], Algorithm: sha256Alg, Encoding: rawEnc, Data: data}, codes.InvalidArgument},
		{"non-hex id", &chunkbridgev1.UploadChunksRequest{Id: strings.Repeat("zz", 32), Algorithm: sha256Alg, Encoding: rawEnc, Data: data}, codes.InvalidArgument},
		{"corrupt zstd", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: zstdEnc, Data: data}, codes.InvalidArgument},
		{"corrupt xz", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: xzEnc, Data: data}, codes.InvalidArgument},
		{"corrupt gzip", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: gzipEnc, Data: data}, codes.InvalidArgument},
		{"zstd bomb", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: zstdEnc, Data: bomb}, codes.InvalidArgument},
		{"payload over 16 MiB", &chunkbridgev1.UploadChunksRequest{Id: good, Algorithm: sha256Alg, Encoding: rawEnc, Data: make([]byte, chunk.MaxSize+1)}, codes.InvalidArgument},
	}
	var reqs []*chunkbridgev1.UploadChunksRequest
	for _, c := range cases {
		reqs = append(reqs, c.req)
	}
	// All on one stream: each is refused on its own and the stream goes on.
	acks := f.upload(t, reqs...)
	for i, c := range cases {
		if got := codes.Code(acks[i].Code); got != c.code {
			t.Errorf("%s: code %v (%s), want %v", c.name, got, acks[i].Message, c.code)
		}
		if name := c.req.Id[:min(len(c.req.Id), 60)]; !strings.Contains(acks[i].Message, name) {
			t.Errorf("%s: message %q does not name the chunk", c.name, acks[i].Message)
		}
	}
	if n := f.store.puts.Load(); n != 0 {
		t.Fatalf("%d refused uploads reached the store", n)
	}
	resp, err := f.client.FindMissingChunks(t.Context(), &chunkbridgev1.FindMissingChunksRequest{Ids: []string{good}})
	if err != nil || len(resp.Missing) != 1 {
		t.Fatalf("after refused uploads the chunk is present: %v %v", resp, err)
	}
}

func TestFindMissingTenThousand(t *testing.T) {
	f := newFixture(t, chunk.Config{PresenceCacheSize: -1})
	var ids, want []string
	var reqs []*chunkbridgev1.UploadChunksRequest
	for i := range 10_000 {
		data := []byte(fmt.Sprint("chunk ", i))
		id := idOf(sha512Alg, data)
		ids = append(ids, id)
		if i%3 == 0 {
			reqs = append(reqs, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha512Alg, Encoding: rawEnc, Data: data})
		} else {
			want = append(want, id)
		}
	}
	f.upload(t, reqs...)
	resp, err := f.client.FindMissingChunks(t.Context(), &chunkbridgev1.FindMissingChunksRequest{Ids: ids})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(resp.Missing, ",") != strings.Join(want, ",") {
		t.Fatalf("FindMissing returned %d ids, want the %d never uploaded, in order", len(resp.Missing), len(want))
	}
	_, err = f.client.FindMissingChunks(t.Context(), &chunkbridgev1.FindMissingChunksRequest{Ids: []string{ids[0], "xyz"}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ids[1]") {
		t.Fatalf("FindMissing with a bad id = %v, want InvalidArgument naming ids[1]", err)
	}
}

func TestDownloadInOrder(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	var ids []string
	var datas [][]byte
	var reqs []*chunkbridgev1.UploadChunksRequest
	for i := range 40 {
		data := randomData(t, 1000+i*997)
		datas = append(datas, data)
		ids = append(ids, idOf(sha256Alg, data))
		reqs = append(reqs, &chunkbridgev1.UploadChunksRequest{Id: ids[i], Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
	}
	f.upload(t, reqs...)
	missing := idOf(sha256Alg, []byte("never uploaded"))
	want := append(append(append([]string{}, ids[:20]...), missing), ids[20:]...)

	for _, enc := range []chunkbridgev1.Encoding{rawEnc, zstdEnc} {
		stream, err := f.client.DownloadChunks(t.Context(), &chunkbridgev1.DownloadChunksRequest{Ids: want, Encoding: enc})
		if err != nil {
			t.Fatal(err)
		}
		dec, _ := zstd.NewReader(nil)
		for i, id := range want {
			r, err := stream.Recv()
			if err != nil {
				t.Fatalf("%v: response %d: %v", enc, i, err)
			}
			if r.Id != id {
				t.Fatalf("%v: response %d is %s, want %s (request order)", enc, i, r.Id, id)
			}
			if id == missing {
				if codes.Code(r.Code) != codes.NotFound || !strings.Contains(r.Message, missing) {
					t.Fatalf("missing chunk: %v %q", codes.Code(r.Code), r.Message)
				}
				continue
			}
			j := i
			if i > 20 {
				j = i - 1
			}
			got := r.Data
			if enc == zstdEnc {
				if r.Encoding != zstdEnc {
					t.Fatalf("stored form came back as %v", r.Encoding)
				}
				got, err = dec.DecodeAll(r.Data, nil)
				if err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, datas[j]) || r.Size != int64(len(datas[j])) || r.Algorithm != sha256Alg {
				t.Fatalf("%v: chunk %d differs", enc, i)
			}
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("after the last chunk: %v, want EOF", err)
		}
	}
}

func TestCorruptStoredChunkIsDataLoss(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := randomData(t, 4000)
	id := idOf(sha256Alg, data)
	f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
	pid, _ := chunk.ParseID(id)
	other := encode(t, zstdEnc, []byte("something else"))
	if err := f.store.Put(t.Context(), pid.Key(), bytes.NewReader(other), int64(len(other)), storage.Metadata{"algorithm": "sha256", "size": "14"}); err != nil {
		t.Fatal(err)
	}
	stream, err := f.client.DownloadChunks(t.Context(), &chunkbridgev1.DownloadChunksRequest{Ids: []string{id}, Encoding: rawEnc})
	if err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil || codes.Code(r.Code) != codes.DataLoss {
		t.Fatalf("download of a corrupt chunk = %v %v, want DataLoss", r, err)
	}
}

func TestStatMissing(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	_, err := f.client.StatChunk(t.Context(), &chunkbridgev1.StatChunkRequest{Id: strings.Repeat("ab", 32)})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Stat(missing) = %v", err)
	}
}

// MaxConcurrentChunks bounds the work in flight across all streams.
func TestConcurrencyLimit(t *testing.T) {
	f := newFixture(t, chunk.Config{MaxConcurrentChunks: 2})
	f.store.entered = make(chan struct{})
	f.store.release = make(chan struct{})
	const n = 6
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := []byte(fmt.Sprint("concurrent ", i))
			_, err := f.svc.Put(context.Background(), chunk.Upload{ID: mustID(t, idOf(sha256Alg, data)), Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	<-f.store.entered
	<-f.store.entered // two are inside the store at once
	for i := range n {
		f.store.release <- struct{}{}
		if i < n-2 {
			<-f.store.entered
		}
	}
	wg.Wait()
	if m := f.store.maxSeen.Load(); m != 2 {
		t.Fatalf("%d chunks were stored at once, want the limit of 2", m)
	}
}

func mustID(t testing.TB, s string) chunk.ID {
	id, err := chunk.ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestSizes(t *testing.T) {
	for _, cache := range []int{0, -1} {
		f := newFixture(t, chunk.Config{PresenceCacheSize: cache})
		data := randomData(t, 12345)
		id := idOf(sha256Alg, data)
		f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id, Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
		sizes, err := f.svc.Sizes(t.Context(), []chunk.ID{mustID(t, id), mustID(t, idOf(sha256Alg, []byte("absent")))})
		if err != nil || len(sizes) != 2 || sizes[0] != 12345 || sizes[1] != -1 {
			t.Fatalf("cache %d: Sizes = %v, %v; want [12345 -1]", cache, sizes, err)
		}
	}
}

// OpenStored yields the stored bytes that Get returns as stored, with
// Get's errors; an object larger than any valid chunk is refused before
// it is read.
func TestOpenStored(t *testing.T) {
	f := newFixture(t, chunk.Config{})
	data := randomData(t, 40000)
	id := mustID(t, idOf(sha256Alg, data))
	f.upload(t, &chunkbridgev1.UploadChunksRequest{Id: id.String(), Algorithm: sha256Alg, Encoding: rawEnc, Data: data})
	want, err := f.svc.Get(t.Context(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	rc, size, err := f.svc.OpenStored(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(want.Data)) || !bytes.Equal(got, want.Data) {
		t.Fatalf("OpenStored: size %d, %d bytes, %v; want the %d stored bytes", size, len(got), err, len(want.Data))
	}

	missing := mustID(t, idOf(sha256Alg, []byte("absent")))
	if _, _, err := f.svc.OpenStored(t.Context(), missing); !errors.Is(err, apierr.ErrNotFound) {
		t.Fatalf("OpenStored(missing) = %v, want ErrNotFound", err)
	}

	huge := mustID(t, idOf(sha256Alg, []byte("huge")))
	big := make([]byte, chunk.MaxSize+chunk.MaxSize/8+1)
	if err := f.store.Put(t.Context(), huge.Key(), bytes.NewReader(big), int64(len(big)), nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.svc.OpenStored(t.Context(), huge); !errors.Is(err, apierr.ErrDigestMismatch) {
		t.Fatalf("OpenStored of a %d-byte object = %v, want ErrDigestMismatch", len(big), err)
	}
}
