package rest_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/rest"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// doorHarness is the REST gateway behind a rest.Door, as `serve` runs it
// without TLS. Requests that reach net/http are counted; the token "good"
// is the only credential when auth is set, checked on both sides.
type doorHarness struct {
	addr    string
	base    string
	door    *rest.Door
	netHTTP atomic.Int64
}

func startDoor(t *testing.T, l rest.Limits, store storage.Store, local, auth bool) *doorHarness {
	t.Helper()
	svcs := servicetest.Start(t, store, chunk.Config{}, catalog.Config{})
	chunks := client.NewGRPC(svcs.Conn)
	if local {
		chunks = client.NewLocal(svcs.Chunks, 0)
	}
	h, err := rest.NewHandler(t.Context(), svcs.Conn, rest.Options{API: true, Limits: l, Chunks: chunks})
	if err != nil {
		t.Fatal(err)
	}
	dh := &doorHarness{}
	srv := rest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dh.netHTTP.Add(1)
		if auth && r.Header.Get("Authorization") != "Bearer good" {
			http.Error(w, "unauthenticated", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}), l)
	dh.door = &rest.Door{Prefix: "/casync/chunks/", Chunks: chunks, Limits: l,
		Admit: func(ctx context.Context, c rest.DoorCredentials) (context.Context, bool) {
			return ctx, !auth || c.Authorization == "Bearer good"
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(dh.door.Listen(ln))
	t.Cleanup(func() { srv.Close(); dh.door.Shutdown(context.Background()) })
	dh.addr = ln.Addr().String()
	dh.base = "http://" + dh.addr
	return dh
}

// harness is dh for the tests written for the plain server.
func (dh *doorHarness) harness() *harness { return &harness{addr: dh.addr, base: dh.base} }

// dial opens a connection to the door, closed with the test; its reads
// and writes fail, not hang, after a minute.
func (dh *doorHarness) dial(t *testing.T) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", dh.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(time.Minute))
	return conn, bufio.NewReader(conn)
}

// put stores a chunk of n random bytes through net/http and returns its
// path and stored bytes.
func (dh *doorHarness) put(t *testing.T, seed uint64, n int) (string, []byte) {
	t.Helper()
	plain := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(plain)
	path, data := cacnk(t, plain)
	req, _ := http.NewRequest(http.MethodPut, dh.base+path, bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer good")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s: %s", path, resp.Status)
	}
	return path, data
}

// pipeline writes reqs on conn at once and reads one response each.
func pipeline(t *testing.T, conn net.Conn, br *bufio.Reader, reqs ...string) []*http.Response {
	t.Helper()
	if _, err := io.WriteString(conn, strings.Join(reqs, "")); err != nil {
		t.Fatal(err)
	}
	var out []*http.Response
	for _, r := range reqs {
		method, _, _ := strings.Cut(r, " ")
		resp, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("response to %q: %v", r[:40], err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response body to %q: %v", r[:40], err)
		}
		resp.Body = io.NopCloser(bytes.NewReader(b))
		out = append(out, resp)
	}
	return out
}

func body(resp *http.Response) []byte { b, _ := io.ReadAll(resp.Body); return b }

// The door answers chunk GETs and HEADs, pipelined, without net/http; a
// request it does not answer (a missing chunk) goes to net/http with
// everything after it on the connection, which net/http then serves.
func TestDoorAnswersChunkReads(t *testing.T) {
	for _, local := range []bool{true, false} {
		name := map[bool]string{true: "local-fs", false: "grpc-memory"}[local]
		t.Run(name, func(t *testing.T) {
			var store storage.Store = memory.New()
			if local {
				st, err := fs.Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				store = st
			}
			dh := startDoor(t, rest.Limits{}, store, local, false)
			path, data := dh.put(t, 1, 200<<10)
			before := dh.netHTTP.Load()
			conn, br := dh.dial(t)
			get := "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"
			head := "HEAD " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"
			rs := pipeline(t, conn, br, get, head, get)
			for i, r := range rs {
				if r.StatusCode != http.StatusOK || r.ContentLength != int64(len(data)) || r.Header.Get("Content-Type") != "application/octet-stream" || r.Header.Get("Date") == "" {
					t.Fatalf("response %d: %s %d bytes %v", i, r.Status, r.ContentLength, r.Header)
				}
			}
			if !bytes.Equal(body(rs[0]), data) || !bytes.Equal(body(rs[2]), data) || len(body(rs[1])) != 0 {
				t.Fatal("the chunk read back differs")
			}
			if n := dh.netHTTP.Load() - before; n != 0 {
				t.Fatalf("%d chunk reads reached net/http, want 0 (the door answers them)", n)
			}

			missing := strings.Replace(get, path[len(path)-10:], "0000.cacnk", 1)
			rs = pipeline(t, conn, br, missing, get)
			if rs[0].StatusCode != http.StatusNotFound || rs[1].StatusCode != http.StatusOK || !bytes.Equal(body(rs[1]), data) {
				t.Fatalf("after a missing chunk: %s, then %s", rs[0].Status, rs[1].Status)
			}
			if n := dh.netHTTP.Load() - before; n != 2 {
				t.Fatalf("%d requests reached net/http, want 2 (the connection is handed over at the missing chunk)", n)
			}
		})
	}
}

// What net/http would refuse goes to net/http: a request without the
// credential gets net/http's 401, one with it the door's 200; a request
// with a body, the door never reads.
func TestDoorRefusalsGoToNetHTTP(t *testing.T) {
	dh := startDoor(t, rest.Limits{}, memory.New(), false, true)
	path, data := dh.put(t, 2, 1000)
	before := dh.netHTTP.Load()
	resp, msg, _ := rawRequest(t, dh.addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", strings.NewReader(""))
	if resp.StatusCode != http.StatusUnauthorized || dh.netHTTP.Load() != before+1 {
		t.Fatalf("without the credential: %s %q, %d requests at net/http", resp.Status, msg, dh.netHTTP.Load()-before)
	}
	resp, msg, _ = rawRequest(t, dh.addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nConnection: close\r\n\r\n", strings.NewReader(""))
	if resp.StatusCode != http.StatusOK || msg != string(data) || dh.netHTTP.Load() != before+1 {
		t.Fatalf("with it: %s, %d requests at net/http", resp.Status, dh.netHTTP.Load()-before)
	}
	if !resp.Close {
		t.Fatalf("Connection: close asked, answered %v", resp.Header)
	}
	resp, _, _ = rawRequest(t, dh.addr, "GET "+path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 3\r\nConnection: close\r\n\r\n", strings.NewReader("abc"))
	if resp.StatusCode != http.StatusOK || dh.netHTTP.Load() != before+2 {
		t.Fatalf("with a body: %s, %d requests at net/http", resp.Status, dh.netHTTP.Load()-before)
	}
}

// Shutdown closes kept-alive connections waiting for their next request.
func TestDoorShutdownClosesIdle(t *testing.T) {
	dh := startDoor(t, rest.Limits{}, memory.New(), false, false)
	path, _ := dh.put(t, 3, 1000)
	conn, br := dh.dial(t)
	if rs := pipeline(t, conn, br, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); rs[0].StatusCode != http.StatusOK {
		t.Fatal(rs[0].Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := dh.door.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("after Shutdown: read %d bytes, %v; want the connection closed", n, err)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("after Shutdown: the idle connection is still open")
	}
}

// Headers that never finish, and a kept-alive connection left idle after
// a chunk read, are closed after HeaderTimeout and IdleTimeout by the
// door as by net/http.
func TestDoorSlowHeadersAndIdleAreClosed(t *testing.T) {
	dh := startDoor(t, rest.Limits{HeaderTimeout: 200 * time.Millisecond, IdleTimeout: 200 * time.Millisecond}, memory.New(), false, false)
	path, _ := dh.put(t, 4, 1000)
	before := dh.netHTTP.Load()
	closed := func(what string, br *bufio.Reader) {
		t.Helper()
		if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("%s: read %d bytes, %v; want the connection closed", what, n, err)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%s: the server kept the connection open", what)
		}
	}
	for _, c := range []struct{ what, send string }{
		{"nothing sent", ""},
		{"unfinished headers", "GET " + path + " HTTP/1.1\r\nHost: x\r\n"},
		{"idle after a chunk read", "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"},
	} {
		conn, err := net.Dial("tcp", dh.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(time.Minute)) // fail, not hang, if never closed
		io.WriteString(conn, c.send)
		br := bufio.NewReader(conn)
		if strings.HasSuffix(c.send, "\r\n\r\n") {
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %v %v", c.what, resp, err)
			}
			io.Copy(io.Discard, resp.Body)
		}
		closed(c.what, br)
	}
	if n := dh.netHTTP.Load() - before; n != 0 {
		t.Fatalf("%d requests reached net/http, want 0", n)
	}
}
