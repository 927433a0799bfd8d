package pbs_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/chunkbridge/chunkbridge/auth"
	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
)

func selfSigned(t testing.TB) tls.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type harness struct {
	addr  string
	svcs  *servicetest.Services
	store storage.Store
}

func newHarness(t testing.TB) *harness { return newHarnessWith(t) }

func newHarnessWith(t testing.TB, configure ...func(*pbs.Server)) *harness {
	st, err := fs.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	svcs := servicetest.Start(t, st, chunk.Config{}, catalog.Config{})
	srv := &pbs.Server{Chunks: chunkclient.NewLocal(svcs.Chunks, 0), Catalog: chunkclient.NewCatalogGRPC(svcs.Conn),
		TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}}
	for _, f := range configure {
		f(srv)
	}
	addr := servicetest.Serve(t, srv)
	return &harness{addr: addr, svcs: svcs, store: st}
}

func (h *harness) open(t testing.TB, path, proto string, q url.Values) (*pbstest.Session, error) {
	return pbstest.Open(t, h.addr, path, proto, "", q)
}

// backup opens a backup session of host/web1 at epoch.
func (h *harness) backup(t testing.TB, epoch int64) *pbstest.Session {
	t.Helper()
	s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dynamicWriter opens a dynamic index writer and returns its wid.
func dynamicWriter(s *pbstest.Session, archive string) int {
	var wid int
	json.Unmarshal(s.OK("POST", "/dynamic_index", map[string]any{"archive-name": archive}), &struct{ Data *int }{&wid})
	return wid
}

func snapQuery(epoch int64) url.Values {
	return url.Values{"store": {"default"}, "backup-type": {"host"}, "backup-id": {"web1"}, "backup-time": {fmt.Sprint(epoch)}}
}

var zenc, _ = zstd.NewWriter(nil)

func zstdFrame(b []byte) []byte { return zenc.EncodeAll(b, nil) }

func chunkBlob(t testing.TB, data []byte, compress bool) []byte {
	if compress {
		return pbstest.Blob(t, data, zstdFrame)
	}
	return pbstest.Blob(t, data, nil)
}

func makeChunks(seed byte, n, size int) [][]byte {
	var out [][]byte
	for i := range n {
		c := bytes.Repeat([]byte{seed, byte(i)}, size/2)
		out = append(out, c)
	}
	return out
}

// backupRun backs up chunks as root.pxar.didx of host/web1 at epoch,
// with the previous snapshot's chunks known; it returns the uploads made.
func backupRun(t *testing.T, h *harness, epoch int64, chunks [][]byte) int {
	s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	return incremental(t, s, epoch, chunks)
}

// incremental backs chunks up as root.pxar.didx of web1 in session s,
// with the previous snapshot's chunks known; it returns the uploads made.
func incremental(t *testing.T, s *pbstest.Session, epoch int64, chunks [][]byte) int {
	t.Helper()
	known := map[string]bool{}
	if st, idx := s.Call("GET", "/previous?archive-name=root.pxar.didx", nil); st == http.StatusOK {
		d, err := pbsidx.ParseDynamic(idx, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range d.Entries {
			known[hex.EncodeToString(e.Digest[:])] = true
		}
	}
	return s.Backup("root.pxar.didx", "web1", epoch, chunks, known, zstdFrame)
}

func TestBackupIncrementalRestore(t *testing.T) {
	h := newHarness(t)
	t1 := time.Now().Add(-time.Hour).Unix()
	first := makeChunks(1, 6, 64<<10)
	if n := backupRun(t, h, t1, first); n != 6 {
		t.Fatalf("first backup uploaded %d chunks, want 6", n)
	}
	// The second run changes one chunk: only it is uploaded.
	second := append([][]byte{}, first...)
	second[3] = bytes.Repeat([]byte{9}, 50<<10)
	if n := backupRun(t, h, t1+60, second); n != 1 {
		t.Fatalf("incremental backup uploaded %d chunks, want 1", n)
	}
	// Restore the second snapshot through the reader.
	r, err := h.open(t, "//api2/json/reader", pbs.ReaderProtocol, snapQuery(t1+60))
	if err != nil {
		t.Fatal(err)
	}
	got := r.Restore("root.pxar.didx")
	if !bytes.Equal(got, bytes.Join(second, nil)) {
		t.Fatal("restored data differs")
	}
	if st, _ := r.Call("GET", "/chunk?digest="+strings.Repeat("ab", 32), nil); st != http.StatusNotFound {
		t.Fatalf("an unregistered chunk: %d", st)
	}
	// The manifest is served too.
	r.OK("GET", "/download?file-name=index.json.blob", nil)

	// Management: both snapshots are listed; a dry-run prune keeps the
	// newest and deletes nothing, a real one deletes the other.
	var list struct {
		Data []struct {
			Time  int64 `json:"backup-time"`
			Files []struct {
				Filename string `json:"filename"`
			} `json:"files"`
			Keep bool `json:"keep"`
		} `json:"data"`
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	do := func(method, path string, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+h.addr+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		list.Data = nil
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %v", method, path, resp.StatusCode, err)
		}
	}
	do("GET", "/api2/json/admin/datastore/default/snapshots", "")
	if len(list.Data) != 2 || list.Data[0].Time != t1+60 || len(list.Data[0].Files) != 2 {
		t.Fatalf("snapshots: %+v", list.Data)
	}
	do("POST", "/api2/json/admin/datastore/default/prune", `{"backup-type":"host","backup-id":"web1","keep-last":1,"dry-run":true}`)
	if len(list.Data) != 2 || !list.Data[0].Keep || list.Data[1].Keep {
		t.Fatalf("dry run: %+v", list.Data)
	}
	do("POST", "/api2/json/admin/datastore/default/prune?backup-type=host&backup-id=web1&keep-last=1", "")
	do("GET", "/api2/json/admin/datastore/default/snapshots", "")
	if len(list.Data) != 1 || list.Data[0].Time != t1+60 {
		t.Fatalf("after prune: %+v", list.Data)
	}
}

func TestRefusedBackups(t *testing.T) {
	h := newHarness(t)
	epoch := time.Now().Add(-time.Hour).Unix()
	s := h.backup(t, epoch)
	wid := dynamicWriter(s, "a.didx")
	c := bytes.Repeat([]byte("x"), 1000)
	sum := sha256.Sum256(c)
	d := hex.EncodeToString(sum[:])
	// A wrong CRC.
	b := chunkBlob(t, c, false)
	b[8] ^= 1
	if st, out := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%s&size=1000&encoded-size=%d", wid, d, len(b)), b); st != http.StatusBadRequest {
		t.Fatalf("a wrong CRC: %d %s", st, out)
	}
	// A wrong digest: the chunk service refuses it.
	other := sha256.Sum256([]byte("other"))
	b = chunkBlob(t, c, true)
	if st, out := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=1000&encoded-size=%d", wid, other, len(b)), b); st < 400 || st >= 500 {
		t.Fatalf("a wrong digest: %d %s", st, out)
	}
	// An append of a digest never uploaded.
	if st, out := s.Call("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": []string{d}, "offset-list": []int{0}}); st != http.StatusBadRequest || !strings.Contains(string(out), "no such chunk") {
		t.Fatalf("an unknown digest: %d %s", st, out)
	}
	s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%s&size=1000&encoded-size=%d", wid, d, len(b)), b)
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": []string{d}, "offset-list": []int{0}})
	// Finish with a writer open.
	if st, out := s.Call("POST", "/finish", nil); st != http.StatusBadRequest || !strings.Contains(string(out), "open") {
		t.Fatalf("finish with an open writer: %d %s", st, out)
	}
	// A wrong csum at close: nothing published.
	if st, out := s.Call("POST", "/dynamic_close", map[string]any{"wid": wid, "chunk-count": 1, "size": 1000, "csum": strings.Repeat("00", 32)}); st != http.StatusBadRequest || !strings.Contains(string(out), "csum") {
		t.Fatalf("a wrong csum: %d %s", st, out)
	}
	if st, out := s.Call("POST", "/finish", nil); st != http.StatusBadRequest {
		t.Fatalf("finish with nothing written: %d %s", st, out)
	}
	snaps, err := chunkclient.NewCatalogGRPC(h.svcs.Conn).ListSnapshots(context.Background(), "", "", "")
	if err != nil || len(snaps) != 0 {
		t.Fatalf("something was published: %v, %v", snaps, err)
	}
	// Another datastore is not found; a namespace is refused.
	q := snapQuery(epoch)
	q.Set("store", "other")
	if _, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, q); err == nil || !strings.HasPrefix(err.Error(), "404") {
		t.Fatalf("another datastore: %v", err)
	}
}

// uploadFixed uploads img in 4 MiB chunks to the fixed writer wid and
// returns their digests, start offsets and the index csum.
func uploadFixed(t *testing.T, s *pbstest.Session, wid int, img []byte, compress bool) ([]string, []int, [32]byte) {
	t.Helper()
	csum := pbsidx.NewCsum()
	var digests []string
	var offsets []int
	for off := 0; off < len(img); off += 4 << 20 {
		c := img[off:min(off+4<<20, len(img))]
		sum := sha256.Sum256(c)
		b := chunkBlob(t, c, compress)
		s.OK("POST", fmt.Sprintf("/fixed_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, sum, len(c), len(b)), b)
		digests = append(digests, hex.EncodeToString(sum[:]))
		offsets = append(offsets, off)
		csum.AddDigest(sum)
	}
	return digests, offsets, csum.Sum()
}

// A fixed index (an image in 4 MiB slots, the last one shorter) backed up
// and read back.
func TestFixedBackupRestore(t *testing.T) {
	h := newHarness(t)
	epoch := time.Now().Add(-time.Hour).Unix()
	img := make([]byte, 9<<20+123)
	rand.Read(img)
	s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	var wid int
	json.Unmarshal(s.OK("POST", "/fixed_index", map[string]any{"archive-name": "disk.img.fidx", "size": len(img)}), &struct{ Data *int }{&wid})
	digests, offsets, sum := uploadFixed(t, s, wid, img, false)
	// Appended out of order: the slots say where each goes.
	s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests[1:], "offset-list": offsets[1:]})
	s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests[:1], "offset-list": offsets[:1]})
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": 3, "size": len(img), "csum": hex.EncodeToString(sum[:])})
	mb, _ := datablob.EncodeRaw([]byte(fmt.Sprintf(`{"backup-type":"host","backup-id":"web1","backup-time":%d,"files":[],"unprotected":{},"signature":null}`, epoch)))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	s.OK("POST", "/finish", nil)

	r, err := h.open(t, "/api2/json/reader", pbs.ReaderProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	f, err := pbsidx.ParseFixed(r.OK("GET", "/download?file-name=disk.img.fidx", nil), 0)
	if err != nil || f.Size != uint64(len(img)) || f.ChunkSize != 4<<20 {
		t.Fatalf("fixed index: %+v, %v", f, err)
	}
	var got []byte
	for _, d := range f.Digests {
		blob, err := datablob.ParseChunk(r.OK("GET", "/chunk?digest="+hex.EncodeToString(d[:]), nil))
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := blob.Decode(datablob.MaxChunkSize)
		got = append(got, plain...)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("restored image differs")
	}
}

// API tokens: both spellings, the principal's tenant as the datastore,
// roles enforced (read: no backup; append: no delete), refusals logged.
func TestTokensAndRoles(t *testing.T) {
	h := newHarnessWith(t, func(s *pbs.Server) {
		s.Authenticate = func(name, secret string) (auth.Principal, error) {
			switch name + ":" + secret {
			case "reader@pbs!r:s1":
				return auth.Principal{Name: name, Tenant: "acme", Role: auth.RoleRead}, nil
			case "backup@pbs!b:s2":
				return auth.Principal{Name: name, Tenant: "acme", Role: auth.RoleAppend}, nil
			}
			return auth.Principal{}, auth.ErrUnknownCredential
		}
	})
	q := snapQuery(time.Now().Unix() - 10)
	q.Set("store", "acme")
	upgrade := func(header string) (int, string) {
		conn, err := tls.Dial("tcp", h.addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /api2/json/backup?%s HTTP/1.1\r\nAuthorization: %s\r\nUpgrade: %s\r\n\r\n", q.Encode(), header, pbs.BackupProtocol)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := upgrade("PBSAPIToken=backup@pbs!b:s2"); st != http.StatusSwitchingProtocols {
		t.Fatalf("append token (=): %d", st)
	}
	if st, _ := upgrade("PBSAPIToken backup@pbs!b:s2"); st != http.StatusSwitchingProtocols {
		t.Fatalf("append token (space): %d", st)
	}
	if st, body := upgrade("PBSAPIToken=reader@pbs!r:s1"); st != http.StatusForbidden || !strings.Contains(body, "reading only") {
		t.Fatalf("read token backing up: %d %s", st, body)
	}
	if st, _ := upgrade("PBSAPIToken=backup@pbs!b:wrong"); st != http.StatusUnauthorized {
		t.Fatalf("a wrong secret: %d", st)
	}
	if st, _ := upgrade(""); st != http.StatusUnauthorized {
		t.Fatalf("no token: %d", st)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(method, path, header string) (int, string) {
		req, _ := http.NewRequest(method, "https://"+h.addr+path, nil)
		req.Header.Set("Authorization", header)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := get("GET", "/api2/json/admin/datastore", "PBSAPIToken=reader@pbs!r:s1"); st != 200 || !strings.Contains(body, `"store":"acme"`) {
		t.Fatalf("datastore list: %d %s", st, body)
	}
	if st, _ := get("GET", "//api2/json/admin/datastore/other/snapshots", "PBSAPIToken=reader@pbs!r:s1"); st != http.StatusNotFound {
		t.Fatalf("another datastore: %d", st)
	}
	if st, body := get("DELETE", "/api2/json/admin/datastore/acme/snapshots?backup-type=host&backup-id=web1&backup-time=1", "PBSAPIToken=backup@pbs!b:s2"); st != http.StatusForbidden {
		t.Fatalf("append deleting: %d %s", st, body)
	}
	if st, _ := get("GET", "/api2/json/version", "PBSAPIToken=nobody@pbs!x:y"); st != http.StatusUnauthorized {
		t.Fatalf("an unknown token: %d", st)
	}
}

// BenchmarkPBS backs up a random image in 4 MiB fixed chunks (raw
// DataBlobs, as clients send data zstd does not shrink) through the
// gateway on the fs store, four uploads in flight, then restores it
// through the reader, four downloads in flight. BENCH_PBS_MIB sets the
// size (default 256). cmd/chunkbridge's BenchmarkPMX measures the same
// against the PMXBCKUP gateway in one run.
func BenchmarkPBS(b *testing.B) {
	size := 256
	if s := os.Getenv("BENCH_PBS_MIB"); s != "" {
		fmt.Sscan(s, &size)
	}
	img := make([]byte, size<<20)
	rand.Read(img)
	for i := range b.N {
		h := newHarness(b)
		epoch := time.Now().Add(-time.Hour).Unix() + int64(i)
		start := time.Now()
		s, err := h.open(b, "/api2/json/backup", pbs.BackupProtocol, snapQuery(epoch))
		if err != nil {
			b.Fatal(err)
		}
		if err := s.BackupFixed("disk.img.fidx", "host", "web1", epoch, bytes.NewReader(img), int64(len(img)), 4); err != nil {
			b.Fatal(err)
		}
		backup := time.Since(start)

		start = time.Now()
		r, err := h.open(b, "/api2/json/reader", pbs.ReaderProtocol, snapQuery(epoch))
		if err != nil {
			b.Fatal(err)
		}
		out := make(bufferAt, len(img))
		if _, err := r.RestoreFixed("disk.img.fidx", out, 4); err != nil {
			b.Fatal(err)
		}
		restore := time.Since(start)
		if !bytes.Equal(out, img) {
			b.Fatal("restored image differs")
		}
		b.ReportMetric(float64(len(img))/1e6/backup.Seconds(), "backup-MB/s")
		b.ReportMetric(float64(len(img))/1e6/restore.Seconds(), "restore-MB/s")
	}
}

// bufferAt is a fixed-size io.WriterAt in memory.
type bufferAt []byte

func (b bufferAt) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return 0, io.ErrShortWrite
	}
	return copy(b[off:], p), nil
}

// speedtest drops a body of up to one encoded chunk, and refuses a longer
// one instead of reading it for as long as BodyTimeout allows.
func TestSpeedtestBodyIsBounded(t *testing.T) {
	h := newHarness(t)
	s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, snapQuery(time.Now().Add(-time.Hour).Unix()))
	if err != nil {
		t.Fatal(err)
	}
	s.OK("GET", "/speedtest", make([]byte, 4<<20))
	if st, out := s.Call("GET", "/speedtest", make([]byte, datablob.MaxEncodedChunkSize+1)); st != http.StatusBadRequest {
		t.Fatalf("an oversized speedtest body: %d %s", st, out)
	}
}
