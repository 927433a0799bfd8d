package rest_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/rest"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// harness is the REST gateway on a real loopback listener, over the
// in-process services on a memory store.
type harness struct {
	addr string
	base string
	// reading counts requests whose handler has started reading the body.
	reading atomic.Int64
	onRead  chan struct{}
}

func start(t *testing.T, l rest.Limits) *harness {
	t.Helper()
	return startOn(t, l, memory.New(), false)
}

// startOn is start on store, with the casync HTTP store on the local
// transport (as in `serve all`) when local is set.
func startOn(t *testing.T, l rest.Limits, store storage.Store, local bool) *harness {
	t.Helper()
	svcs := servicetest.Start(t, store, chunk.Config{}, catalog.Config{})
	opts := rest.Options{API: true, Limits: l}
	if local {
		opts.Chunks = client.NewLocal(svcs.Chunks, 0)
	}
	h, err := rest.NewHandler(t.Context(), svcs.Conn, opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := &harness{onRead: make(chan struct{}, 1024)}
	// The hook sits inside the guard, as the auth check does in serve.
	srv := rest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &hookBody{ReadCloser: r.Body, h: hs}
		}
		h.ServeHTTP(w, r)
	}), l)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	hs.addr = ln.Addr().String()
	hs.base = "http://" + hs.addr
	return hs
}

type hookBody struct {
	io.ReadCloser
	h    *harness
	once sync.Once
}

func (b *hookBody) Read(p []byte) (int, error) {
	b.once.Do(func() { b.h.reading.Add(1); b.h.onRead <- struct{}{} })
	return b.ReadCloser.Read(p)
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

// cacnk returns data's id (SHA-512/256) and its casync chunk file path.
func cacnk(t *testing.T, data []byte) (string, []byte) {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	sum := sha512.Sum512_256(data)
	id := hex.EncodeToString(sum[:])
	return "/casync/chunks/" + id[:4] + "/" + id + ".cacnk", enc.EncodeAll(data, nil)
}

// rawRequest writes head on a fresh connection, then body in the
// background, counting the bytes the connection took, until the body ends
// or the server closes. It returns the response and the count once the
// writer has stopped.
func rawRequest(t *testing.T, addr, head string, body io.Reader) (*http.Response, string, int64) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Not synchronisation: a server that never cuts the client fails
	// the test instead of hanging it.
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := body.Read(buf)
			if n > 0 {
				if _, err := conn.Write(buf[:n]); err != nil {
					return
				}
				sent.Add(int64(n))
			}
			if err != nil {
				return
			}
		}
	}()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	msg, _ := io.ReadAll(resp.Body)
	<-done // ends only when the server has closed the connection (or the body ended)
	return resp, string(msg), sent.Load()
}

type fill byte

func (f fill) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(f)
	}
	return len(p), nil
}

// A 200 MiB JSON body is refused with 413 while it arrives: with a
// Content-Length at once, chunked once the limit is passed. The client
// gets out only what socket buffers hold.
func TestRESTOversizedJSONIs413(t *testing.T) {
	h := start(t, rest.Limits{MaxJSONBody: 1 << 20})
	const size = 200 << 20
	for _, c := range []struct{ name, head string }{
		{"content-length", fmt.Sprintf("POST /v1/chunks:findMissing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", size)},
		{"chunked", "POST /v1/chunks:findMissing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := io.Reader(io.MultiReader(strings.NewReader(`{"ids":["`), io.LimitReader(fill('a'), size)))
			if c.name == "chunked" {
				body = &chunked{r: body}
			}
			resp, msg, sent := rawRequest(t, h.addr, c.head, body)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "larger than 1048576 bytes") {
				t.Fatalf("POST 200 MiB JSON = %d %s, want 413 naming the limit", resp.StatusCode, msg)
			}
			if sent > 32<<20 {
				t.Fatalf("the client sent %d bytes of a 200 MiB JSON body; want at most 32 MiB", sent)
			}
			t.Logf("client sent %d bytes of a %d-byte body", sent, size)
		})
	}
	// A body under the limit still works.
	if code, msg := do(t, http.MethodPost, h.base+"/v1/chunks:findMissing", strings.NewReader(`{"ids":[]}`)); code != http.StatusOK {
		t.Fatalf("POST small JSON = %d %s", code, msg)
	}
}

// chunked frames r in HTTP/1.1 chunked encoding.
type chunked struct {
	r   io.Reader
	buf []byte
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		data := make([]byte, 32<<10)
		n, err := c.r.Read(data)
		if n == 0 && err != nil {
			return 0, err
		}
		c.buf = append(fmt.Appendf(nil, "%x\r\n", n), data[:n]...)
		c.buf = append(c.buf, "\r\n"...)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// Client mistakes on REST routes are 4xx, never 500.
func TestRESTClientErrorsAre4xx(t *testing.T) {
	h := start(t, rest.Limits{})
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/indexes?page_token=%ff", "", 400},
		{"GET", "/v1/indexes?page_size=many", "", 400},
		{"GET", "/v1/indexes?prefix=%ff", "", 400},
		{"GET", "/v1/chunks/nothex", "", 400},
		{"GET", "/v1/chunks/" + strings.Repeat("ab", 32), "", 404},
		{"POST", "/v1/chunks:findMissing", `{"ids":["nothex"]}`, 400},
		{"POST", "/v1/chunks:findMissing", `{"ids":`, 400},
		{"POST", "/v1/chunks:findMissing", "{\"ids\":[\"\xff\"]}", 400},
		{"GET", "/v1/indexes/%ff", "", 400},
		{"PATCH", "/v1/indexes", "", 405},
		{"GET", "/v1/nothing", "", 404},
	} {
		var body io.Reader
		if c.body != "" {
			body = strings.NewReader(c.body)
		}
		if code, msg := do(t, c.method, h.base+c.path, body); code != c.want {
			t.Errorf("%s %s = %d %s, want %d", c.method, c.path, code, msg, c.want)
		}
	}
	// A chunk whose data does not match its id, through the mounted store.
	path, data := cacnk(t, []byte("one"))
	other, _ := cacnk(t, []byte("two"))
	if code, msg := do(t, http.MethodPut, h.base+other, bytes.NewReader(data)); code != http.StatusBadRequest {
		t.Errorf("PUT mismatched chunk = %d %s, want 400", code, msg)
	}
	if code, msg := do(t, http.MethodPut, h.base+path, bytes.NewReader(data)); code != http.StatusCreated {
		t.Errorf("PUT chunk = %d %s, want 201", code, msg)
	}
}

// A body trickling in below MinRate is cut even though every read gets
// bytes within BodyTimeout; a body at a normal rate that takes several
// BodyTimeouts in all is not.
func TestRESTSlowBodyIsCut(t *testing.T) {
	h := start(t, rest.Limits{BodyTimeout: 300 * time.Millisecond, MinRate: 4 << 10})
	// Incompressible, so that the body really is 160 KiB.
	plain := make([]byte, 160<<10)
	rand.NewChaCha8([32]byte{1}).Read(plain)
	path, data := cacnk(t, plain)

	// Slow loris: one byte each 20 ms, 50 B/s.
	head := fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", path, len(data))
	resp, msg, sent := rawRequest(t, h.addr, head, &paced{data: data, piece: 1, every: 20 * time.Millisecond})
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(msg, "too slowly") {
		t.Fatalf("slow body = %d %s, want 408 too slowly", resp.StatusCode, msg)
	}
	if sent >= int64(len(data)) {
		t.Fatalf("the slow body was read whole (%d bytes)", sent)
	}

	// Honest client: 8 KiB each 25 ms (320 KiB/s), several BodyTimeouts.
	start := time.Now()
	req, err := http.NewRequest(http.MethodPut, h.base+path, &paced{data: data, piece: 8 << 10, every: 25 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(data))
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != http.StatusCreated {
		t.Fatalf("paced upload of %d bytes over %v = %d %s, want 201", len(data), time.Since(start), r2.StatusCode, b)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Logf("the paced upload took only %v; it does not show that there is no fixed total", took)
	}
}

// paced is a body that gives piece bytes of data every interval, like a
// client on a link of that rate.
type paced struct {
	data  []byte
	piece int
	every time.Duration
	tick  *time.Ticker
}

func (p *paced) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	if p.tick == nil {
		p.tick = time.NewTicker(p.every)
	} else {
		<-p.tick.C
	}
	n := copy(b[:min(len(b), p.piece)], p.data)
	p.data = p.data[n:]
	return n, nil
}

// 200 clients that send headers and then stall hold one goroutine each
// and little memory (not the 16 MiB their Content-Length claims), the
// server keeps answering others meanwhile, and every one is cut.
func TestREST200SlowBodies(t *testing.T) {
	const clients = 200
	h := start(t, rest.Limits{BodyTimeout: 3 * time.Second, MinRate: 1 << 10})
	path, data := cacnk(t, []byte("served while others stall"))

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Minute)) // fail, not hang, if never cut
		// Half claim a 16 MiB chunk, half a 1 GiB index.
		target := fmt.Sprintf("/casync/chunks/%04x/%04x%s.cacnk", i, i, strings.Repeat("0", 60))
		size := 16 << 20
		if i%2 == 1 {
			target, size = fmt.Sprintf("/casync/indexes/slow%d.caibx", i), 1<<30
		}
		if _, err := fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nx", target, size-1000); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	for range clients {
		<-h.onRead // every handler is reading its body
	}
	runtime.GC()
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	held := int64(during.HeapAlloc) - int64(before.HeapAlloc)
	extra := runtime.NumGoroutine() - goroutines
	t.Logf("%d stalled bodies: %d more goroutines, heap %+d KiB", clients, extra, held>>10)
	if extra > 2*clients+20 {
		t.Errorf("%d stalled bodies hold %d goroutines; want at most 2 each", clients, extra)
	}
	if held > 80<<20 {
		t.Errorf("%d stalled bodies hold %d MiB of heap; want under 80 MiB", clients, held>>20)
	}

	// Others are served meanwhile.
	if code, msg := do(t, http.MethodPut, h.base+path, bytes.NewReader(data)); code != http.StatusCreated {
		t.Fatalf("PUT chunk among stalled clients = %d %s", code, msg)
	}
	if code, msg := do(t, http.MethodGet, h.base+path, nil); code != http.StatusOK {
		t.Fatalf("GET chunk among stalled clients = %d %s", code, msg)
	}
	if code, msg := do(t, http.MethodGet, h.base+"/healthz", nil); code != http.StatusOK {
		t.Fatalf("GET /healthz among stalled clients = %d %s", code, msg)
	}

	// Every stalled client is cut: each connection ends (with a 408 or
	// at once), without the test waiting on a clock of its own.
	for i, c := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("stalled client %d: %d, want 408", i, resp.StatusCode)
			}
		} else if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			var ne net.Error
			if !errors.As(err, &ne) || ne.Timeout() {
				t.Errorf("stalled client %d: %v", i, err)
			}
		}
	}
	if n := h.reading.Load(); n < clients {
		t.Fatalf("only %d of %d stalled bodies reached the handler", n, clients)
	}
}

// A client that stops reading a large response is cut after WriteTimeout
// plus the response's size at MinRate; the server's log record is the
// hook the test waits for.
// On a directory store through the local transport, as in `serve all`,
// the chunk goes out by sendfile under the same deadline.
func TestRESTSlowReaderIsCut(t *testing.T) {
	l := rest.Limits{WriteTimeout: 200 * time.Millisecond, MinRate: 64 << 20}
	t.Run("grpc-memory", func(t *testing.T) {
		testSlowReaderIsCut(t, l, time.Minute, func(l rest.Limits) *harness { return start(t, l) })
	})
	t.Run("local-fs", func(t *testing.T) {
		testSlowReaderIsCut(t, l, time.Minute, func(l rest.Limits) *harness {
			st, err := fs.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return startOn(t, l, st, true)
		})
	})
	// The same through the door, which answers these reads ahead of
	// net/http.
	t.Run("door-grpc-memory", func(t *testing.T) {
		testSlowReaderIsCut(t, l, time.Minute, func(l rest.Limits) *harness { return startDoor(t, l, memory.New(), false, false).harness() })
	})
	t.Run("door-local-fs", func(t *testing.T) {
		testSlowReaderIsCut(t, l, time.Minute, func(l rest.Limits) *harness {
			st, err := fs.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return startDoor(t, l, st, true, false).harness()
		})
	})
}

// A client that reads nothing is cut after about WriteTimeout, not after
// the whole response's size at MinRate (here 48 s for 12 MiB): each
// deadline covers one piece of the response.
func TestRESTStalledReaderIsCutAtWriteTimeout(t *testing.T) {
	l := rest.Limits{WriteTimeout: 200 * time.Millisecond, MinRate: 256 << 10}
	t.Run("grpc-memory", func(t *testing.T) {
		testSlowReaderIsCut(t, l, 10*time.Second, func(l rest.Limits) *harness { return start(t, l) })
	})
	t.Run("local-fs", func(t *testing.T) {
		testSlowReaderIsCut(t, l, 10*time.Second, func(l rest.Limits) *harness {
			st, err := fs.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return startOn(t, l, st, true)
		})
	})
	// The same through the door, which answers these reads ahead of
	// net/http.
	t.Run("door-grpc-memory", func(t *testing.T) {
		testSlowReaderIsCut(t, l, 10*time.Second, func(l rest.Limits) *harness { return startDoor(t, l, memory.New(), false, false).harness() })
	})
	t.Run("door-local-fs", func(t *testing.T) {
		testSlowReaderIsCut(t, l, 10*time.Second, func(l rest.Limits) *harness {
			st, err := fs.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return startDoor(t, l, st, true, false).harness()
		})
	})
}

func testSlowReaderIsCut(t *testing.T, l rest.Limits, within time.Duration, start func(rest.Limits) *harness) {
	logs := &recordHandler{msgs: make(chan string, 16)}
	l.Log = slog.New(logs)
	h := start(l)
	// Larger than loopback's socket buffers, and incompressible.
	plain := make([]byte, 12<<20)
	rand.NewChaCha8([32]byte{2}).Read(plain)
	path, data := cacnk(t, plain)
	if code, msg := do(t, http.MethodPut, h.base+path, bytes.NewReader(data)); code != http.StatusCreated {
		t.Fatalf("PUT 12 MiB chunk = %d %s", code, msg)
	}
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		// A small receive window, so the server's writes block soon.
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Minute)) // fail, not hang, if never cut
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	select {
	case msg := <-logs.msgs:
		if !strings.Contains(msg, "read too slowly") {
			t.Fatalf("logged %q, want the cut response", msg)
		}
	case <-time.After(within): // fail, not hang, if never cut
		t.Fatalf("the response to a client that stopped reading was not cut within %v", within)
	}
	// Now read: the response stops short of its Content-Length.
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the cut response: %v", err)
	}
	got, err := io.Copy(io.Discard, resp.Body)
	if err == nil || got >= resp.ContentLength {
		t.Fatalf("the slow reader got %d of %d bytes (err %v); want a cut response", got, resp.ContentLength, err)
	}
	t.Logf("the slow reader got %d of %d bytes before the cut", got, resp.ContentLength)
}

// recordHandler passes every log message to msgs.
type recordHandler struct{ msgs chan string }

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

// Headers that never finish, and a kept-alive connection left idle, are
// closed after HeaderTimeout and IdleTimeout: the connection is seen to
// end.
func TestRESTSlowHeadersAndIdleAreClosed(t *testing.T) {
	h := start(t, rest.Limits{HeaderTimeout: 200 * time.Millisecond, IdleTimeout: 200 * time.Millisecond})
	closed := func(what string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(time.Minute)) // fail, not hang, if never closed
		n, err := io.Copy(io.Discard, c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: the server kept the connection open", what)
		}
		t.Logf("%s: closed after %d bytes (%v)", what, n, err)
	}

	slow, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	closed("unfinished headers", slow)

	idle, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	idle.SetReadDeadline(time.Now().Add(time.Minute))
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("idle connection: read %d bytes, %v; want it closed", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("idle connection: the server kept it open")
	}
}
