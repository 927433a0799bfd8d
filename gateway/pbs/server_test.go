package pbs_test

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
)

// A management request is passed on with its body unread: a client that
// announces a huge body and sends none is answered at once, not held while
// the gateway buffers a body it will never get (or a gigabyte it does).
func TestManagementBodyNotBuffered(t *testing.T) {
	h := newHarness(t)
	c, err := tls.Dial("tcp", h.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// No Host header, as the Go client sends none.
	fmt.Fprintf(c, "GET /api2/json/version HTTP/1.1\r\nContent-Length: %d\r\n\r\n", 1<<30)
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer after %v: %v", time.Since(start), err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
}

// finish waits for every blob and index under way: the manifest it
// publishes never names a file whose upload was not yet answered.
func TestFinishWaitsForUploads(t *testing.T) {
	h := newHarness(t)
	s := h.backup(t, 1700000000)
	a := pbstest.Blob(t, []byte("a"), nil)
	s.OK("POST", fmt.Sprintf("/blob?file-name=a.blob&encoded-size=%d", len(a)), a)
	manifest := `{"backup-type":"host","backup-id":"web1","backup-time":1700000000,"files":[],"unprotected":{},"signature":null}`
	mb, _ := datablob.EncodeRaw([]byte(manifest))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)

	b := pbstest.Blob(t, []byte("b"), nil)
	storing := make(chan struct{}, 1)
	pbs.OnStartedStoring(t, func() { storing <- struct{}{} })
	pr, pw := io.Pipe()
	done := make(chan int)
	go func() {
		st, _ := s.Call("POST", fmt.Sprintf("/blob?file-name=b.blob&encoded-size=%d", len(b)), pr)
		done <- st
	}()
	pw.Write(b[:1])
	<-storing // the blob's handler counted it
	if st, out := s.Call("POST", "/finish", nil); st != http.StatusBadRequest || !strings.Contains(string(out), "being stored") {
		t.Fatalf("finish with a blob under way: %d %s", st, out)
	}
	pw.Write(b[1:])
	pw.Close()
	if st := <-done; st != http.StatusOK {
		t.Fatalf("blob: %d", st)
	}
	s.OK("POST", "/finish", nil)
}

// A chunk the session could not remember is refused, not answered OK and
// then missing from the append that names it.
func TestKnownChunksCap(t *testing.T) {
	h := newHarnessWith(t, func(s *pbs.Server) { s.MaxChunks = 1 })
	s := h.backup(t, 1700000000)
	wid := dynamicWriter(s, "root.pxar.didx")
	for i, data := range makeChunks(7, 2, 1000) {
		sum := sha256.Sum256(data)
		blob := pbstest.Blob(t, data, nil)
		st, out := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, sum, len(data), len(blob)), blob)
		want := http.StatusOK
		if i == 1 {
			want = http.StatusServiceUnavailable
		}
		if st != want {
			t.Fatalf("chunk %d: %d %s, want %d", i, st, out, want)
		}
	}
}

// A management request whose body trickles in is dropped once
// HandshakeTimeout has passed, not held for as long as the client likes.
func TestManagementSlowBody(t *testing.T) {
	h := newHarnessWith(t, func(s *pbs.Server) { s.HandshakeTimeout = time.Second })
	c, err := tls.Dial("tcp", h.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST /api2/json/access/ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	start := time.Now()
	io.Copy(io.Discard, c) // the server answers or closes
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the connection was held %v", d)
	}
}

// A chunk body that stops in the middle (the client still answering
// pings) fails once BodyTimeout has passed, and gives back its share of
// the upload budget: the next upload of the whole budget's size succeeds.
func TestStalledBodyIsCut(t *testing.T) {
	data := makeChunks(9, 1, 1<<20)[0]
	h := newHarnessWith(t, func(s *pbs.Server) {
		s.BodyTimeout = time.Second
		s.UploadBytes = int64(len(data)) + 1024 // one chunk at a time
	})
	s := h.backup(t, 1700000000)
	wid := dynamicWriter(s, "root.pxar.didx")
	sum := sha256.Sum256(data)
	blob := pbstest.Blob(t, data, nil)
	path := fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, sum, len(data), len(blob))
	pr, pw := io.Pipe()
	defer pw.Close()
	done := make(chan int, 1)
	go func() {
		st, _ := s.Call("POST", path, pr)
		done <- st
	}()
	pw.Write(blob[:len(blob)/2])
	select {
	case st := <-done:
		if st < 400 {
			t.Fatalf("a stalled body was answered %d", st)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stalled body held its stream for 30 s, BodyTimeout is 1 s")
	}
	if st, out := s.Call("POST", path, blob); st != http.StatusOK {
		t.Fatalf("the next chunk after the cut: %d %s; want the budget given back", st, out)
	}
}

// A session's open indexes hold at most MaxEntries chunk entries
// together, across writers.
func TestSessionEntriesCap(t *testing.T) {
	h := newHarnessWith(t, func(s *pbs.Server) { s.MaxEntries = 3 })
	s := h.backup(t, 1700000000)
	chunks := makeChunks(11, 4, 1000)
	wa, wb := dynamicWriter(s, "a.pxar.didx"), dynamicWriter(s, "b.pxar.didx")
	var digests []string
	for _, c := range chunks {
		sum := sha256.Sum256(c)
		blob := pbstest.Blob(t, c, nil)
		s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wa, sum, len(c), len(blob)), blob)
		digests = append(digests, hex.EncodeToString(sum[:]))
	}
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wa, "digest-list": digests[:2], "offset-list": []int{0, 1000}})
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wb, "digest-list": digests[2:3], "offset-list": []int{0}})
	if st, out := s.Call("PUT", "/dynamic_index", map[string]any{"wid": wb, "digest-list": digests[3:4], "offset-list": []int{1000}}); st < 400 || !strings.Contains(string(out), "chunk entries") {
		t.Fatalf("a fourth entry across two writers with MaxEntries 3: %d %s", st, out)
	}
}
