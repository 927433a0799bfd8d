package casync_test

import (
	"bufio"
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"

	cbclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

func startHTTPStore(t *testing.T) *httptest.Server { return startHTTPStoreOn(t, transports[0]) }

func startHTTPStoreOn(t *testing.T, tr transport) *httptest.Server {
	t.Helper()
	svcs := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
	srv := httptest.NewServer(&casync.HTTPStore{Chunks: tr.open(svcs), Catalog: cbclient.NewCatalogGRPC(svcs.Conn)})
	t.Cleanup(srv.Close)
	return srv
}

// cacnk returns data's id (SHA-512/256) and its zstd-compressed form.
func cacnk(t *testing.T, data []byte) (string, []byte) {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	sum := sha512.Sum512_256(data)
	return hex.EncodeToString(sum[:]), enc.EncodeAll(data, nil)
}

func do(t *testing.T, method, url string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func chunkURL(base, id string) string { return base + "/chunks/" + id[:4] + "/" + id + ".cacnk" }

func TestHTTPChunkRoundTrip(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		srv := startHTTPStoreOn(t, tr)
		data := bytes.Repeat([]byte("chunkbridge "), 10000)
		id, body := cacnk(t, data)
		if code, msg := do(t, http.MethodPut, chunkURL(srv.URL, id), bytes.NewReader(body)); code != http.StatusCreated {
			t.Fatalf("PUT chunk = %d %s, want 201", code, msg)
		}
		resp, err := http.Get(chunkURL(srv.URL, id))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(got)) {
			t.Fatalf("GET chunk = %d, Content-Length %d for %d bytes", resp.StatusCode, resp.ContentLength, len(got))
		}
		dec, err := zstd.NewReader(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dec.Close()
		if plain, err := dec.DecodeAll(got, nil); err != nil || !bytes.Equal(plain, data) {
			t.Fatalf("GET chunk returned other data (decode err %v)", err)
		}
	})
}

// A chunk whose data does not hash to its name is the client's mistake.
func TestHTTPPutChunkDigestMismatchIs400(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		srv := startHTTPStoreOn(t, tr)
		_, body := cacnk(t, []byte("the data"))
		wrong, _ := cacnk(t, []byte("other data"))
		code, msg := do(t, http.MethodPut, chunkURL(srv.URL, wrong), bytes.NewReader(body))
		if code != http.StatusBadRequest || !strings.Contains(msg, "neither SHA-512/256 nor SHA-256") {
			t.Fatalf("PUT mismatched chunk = %d %q, want 400 naming the digest mismatch", code, msg)
		}
	})
}

func TestHTTPPutChunkRefusals(t *testing.T) {
	srv := startHTTPStore(t)
	id, _ := cacnk(t, []byte("x"))
	cases := []struct {
		name string
		body io.Reader
		want int
	}{
		{"not compressed", strings.NewReader("plain text"), http.StatusBadRequest},
		{"empty", http.NoBody, http.StatusBadRequest},
		// Content-Length says too much: refused before any body is read.
		{"too large", bytes.NewReader(make([]byte, 20<<20)), http.StatusRequestEntityTooLarge},
		// Unknown length: refused once the limit is passed.
		{"too large chunked", io.LimitReader(zeros{}, 64<<20), http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if code, msg := do(t, http.MethodPut, chunkURL(srv.URL, id), c.body); code != c.want {
				t.Fatalf("PUT = %d %q, want %d", code, msg, c.want)
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// sendRaw writes head and then body on a fresh connection, counting the
// bytes the connection took, and returns the response and that count.
func sendRaw(t *testing.T, addr, head string, body io.Reader) (resp *http.Response, sent int64) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.WriteString(conn, head); err != nil {
			return
		}
		buf := make([]byte, 64<<10)
		for {
			k, err := body.Read(buf)
			if k > 0 {
				if _, err := conn.Write(buf[:k]); err != nil {
					return // the server closed the connection
				}
				n.Add(int64(k))
			}
			if err != nil {
				return
			}
		}
	}()
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	// The server must end the connection itself rather than drain the
	// body; closing ours only after the writer has stopped proves it.
	<-done
	return resp, n.Load()
}

// A gigabyte of garbage sent as an index is refused on its header, and
// the server stops reading: the client gets only a bounded prefix out.
func TestHTTPGarbageIndexRefusedOnHeader(t *testing.T) {
	srv := startHTTPStore(t)
	const size = 1 << 30
	head := fmt.Sprintf("PUT /indexes/garbage.caibx HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
	resp, sent := sendRaw(t, srv.Listener.Addr().String(), head, io.LimitReader(garbage{}, size))
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "not a casync index") {
		t.Fatalf("PUT garbage index = %d %q, want 400 not a casync index", resp.StatusCode, msg)
	}
	// Kernel socket buffers on loopback hold a few MiB; the rest of the
	// gigabyte must never have left the client.
	if sent > 32<<20 {
		t.Fatalf("the client sent %d bytes of a garbage index before the server cut it; want at most 32 MiB", sent)
	}
	t.Logf("client sent %d bytes of a %d-byte garbage index", sent, size)
}

type garbage struct{}

func (garbage) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	return len(p), nil
}

func TestHTTPIndexPut(t *testing.T) {
	srv := startHTTPStore(t)
	data := []byte("index test chunk")
	id, body := cacnk(t, data)
	if code, msg := do(t, http.MethodPut, chunkURL(srv.URL, id), bytes.NewReader(body)); code != http.StatusCreated {
		t.Fatalf("PUT chunk = %d %s", code, msg)
	}
	h, err := caindex.BlobHeader(caindex.SHA512_256, 1, 1, 64)
	if err != nil {
		t.Fatal(err)
	}
	index := func(ids ...string) []byte {
		var entries []caindex.Entry
		var end uint64
		for _, x := range ids {
			raw, _ := hex.DecodeString(x)
			entries = append(entries, caindex.Entry{Start: end, End: end + uint64(len(data)), ID: [32]byte(raw)})
			end += uint64(len(data))
		}
		var b bytes.Buffer
		if err := caindex.Write(&b, h, entries); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	good := index(id)
	if code, msg := do(t, http.MethodPut, srv.URL+"/indexes/good.caibx", bytes.NewReader(good)); code != http.StatusCreated {
		t.Fatalf("PUT index = %d %s, want 201", code, msg)
	}
	if code, got := do(t, http.MethodGet, srv.URL+"/indexes/good.caibx", nil); code != http.StatusOK || got != string(good) {
		t.Fatalf("GET index = %d, %d bytes; want 200 and the %d bytes put", code, len(got), len(good))
	}
	// 2 MB: read and sent in growing pieces, parsed as it arrives.
	ids := make([]string, 50000)
	for i := range ids {
		ids[i] = id
	}
	big := index(ids...)
	if code, msg := do(t, http.MethodPut, srv.URL+"/indexes/big.caibx", bytes.NewReader(big)); code != http.StatusCreated {
		t.Fatalf("PUT %d-byte index = %d %s, want 201", len(big), code, msg)
	}
	if code, got := do(t, http.MethodGet, srv.URL+"/indexes/big.caibx", nil); code != http.StatusOK || got != string(big) {
		t.Fatalf("GET big index = %d, %d bytes; want 200 and the %d bytes put", code, len(got), len(big))
	}
	missing, _ := cacnk(t, []byte("never uploaded"))
	bad := index(missing)
	if code, msg := do(t, http.MethodPut, srv.URL+"/indexes/missing.caibx", bytes.NewReader(bad)); code != http.StatusConflict {
		t.Fatalf("PUT index with a missing chunk = %d %s, want 409", code, msg)
	}
	for name, body := range map[string][]byte{
		"truncated":     good[:len(good)-1],
		"short header":  good[:10],
		"empty":         nil,
		"trailing data": append(bytes.Clone(good), 0),
	} {
		if code, msg := do(t, http.MethodPut, srv.URL+"/indexes/x.caibx", bytes.NewReader(body)); code != http.StatusBadRequest {
			t.Errorf("PUT %s index = %d %s, want 400", name, code, msg)
		}
	}
	for _, name := range []string{"%ff.caibx", "no-suffix", "snapshots/x.caibx", "a/../b.caibx"} {
		if code, msg := do(t, http.MethodPut, srv.URL+"/indexes/"+name, bytes.NewReader(good)); code != http.StatusBadRequest {
			t.Errorf("PUT index named %s = %d %s, want 400", name, code, msg)
		}
	}
	if code, msg := do(t, http.MethodGet, srv.URL+"/indexes/%ff.caibx", nil); code != http.StatusBadRequest {
		t.Errorf("GET index named %%ff = %d %s, want 400", code, msg)
	}
	if code, msg := do(t, http.MethodGet, srv.URL+"/indexes/x.caibx", nil); code != http.StatusNotFound {
		t.Fatalf("GET refused index = %d %s, want 404: nothing is published", code, msg)
	}
	small := &casync.HTTPStore{MaxIndexSize: int64(len(good)) - 1}
	rec := httptest.NewRecorder()
	small.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/indexes/big.caibx", bytes.NewReader(good)))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("PUT index over MaxIndexSize = %d %s, want 413", rec.Code, rec.Body)
	}
}

func TestHTTPStatusTable(t *testing.T) {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		got := casync.HTTPStatus(c)
		server := c == codes.Unknown || c == codes.Internal || c == codes.Unavailable || c == codes.DataLoss || c == codes.Unimplemented || c == codes.DeadlineExceeded
		switch {
		case c == codes.OK:
			if got != http.StatusOK {
				t.Errorf("%v -> %d, want 200", c, got)
			}
		case server && got < 500, !server && (got < 400 || got >= 500):
			t.Errorf("%v -> %d: a client error must be 4xx and a server fault 5xx", c, got)
		}
	}
	for c, want := range map[codes.Code]int{
		codes.InvalidArgument:    400,
		codes.NotFound:           404,
		codes.AlreadyExists:      409,
		codes.FailedPrecondition: 409,
		codes.Unavailable:        503,
		codes.DataLoss:           500,
		codes.Unauthenticated:    401,
	} {
		if got := casync.HTTPStatus(c); got != want {
			t.Errorf("%v -> %d, want %d", c, got, want)
		}
	}
}
