package pmxclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
	"github.com/chunkbridge/chunkbridge/pmxclient/pmxtest"
)

// scripted is the server end of a connection that a test plays packet by
// packet with the wire codec.
type scripted struct {
	t       testing.TB
	conn    net.Conn
	packets chan pmxproto.Packet // what the client sent, read ahead
	w       *pmxproto.Writer
}

// newScripted connects a client to a scripted server that has sent hello.
func newScripted(t testing.TB, hello pmxproto.Packet) (*pmxclient.Client, *scripted, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		w := pmxproto.NewWriter(c)
		w.WritePacket(hello)
		w.Flush()
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pmxclient.Dial(ctx, ln.Addr().String(), nil)
	conn := <-accepted
	if conn == nil {
		t.Fatal("accept failed")
	}
	s := &scripted{t: t, conn: conn, packets: make(chan pmxproto.Packet, 1024), w: pmxproto.NewWriter(conn)}
	go func() {
		defer close(s.packets)
		r := pmxproto.NewReader(conn)
		for {
			p, err := r.ReadPacket()
			if err != nil {
				return
			}
			s.packets <- p
		}
	}()
	t.Cleanup(func() { conn.Close() })
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, s, err
}

func helloV1() pmxproto.Packet { return &pmxproto.Hello{ID: 0, Version: pmxproto.Version} }

// read returns the next packet the client sent, failing the test after a
// timeout.
func (s *scripted) read() pmxproto.Packet {
	s.t.Helper()
	select {
	case p, ok := <-s.packets:
		if !ok {
			s.t.Fatal("scripted server: the client closed the connection")
		}
		return p
	case <-time.After(5 * time.Second):
		s.t.Fatal("scripted server: no packet within 5 s")
	}
	return nil
}

// quiet reports whether nothing arrives within d.
func (s *scripted) quiet(d time.Duration) bool {
	select {
	case <-s.packets:
		return false
	case <-time.After(d):
		return true
	}
}

func (s *scripted) send(ps ...pmxproto.Packet) {
	s.t.Helper()
	for _, p := range ps {
		if err := s.w.WritePacket(p); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := s.w.Flush(); err != nil {
		s.t.Fatal(err)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func chunkOf(i int) ([]byte, pmxproto.Digest) {
	data := []byte(fmt.Sprintf("chunk %d", i))
	return data, sha256.Sum256(data)
}

func TestDialChecksHello(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hello pmxproto.Packet
		want  string
	}{
		{"version", &pmxproto.Hello{ID: 0, Version: 2}, "version 2"},
		{"id", &pmxproto.Hello{ID: 3, Version: pmxproto.Version}, "id 3"},
		{"not hello", &pmxproto.Ok{ID: 0}, "sent Ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := newScripted(t, tc.hello)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// A server that refuses the connection with Error in place of Hello (the
// gateway beyond MaxConns) is reported with its reason.
func TestDialReportsRefusal(t *testing.T) {
	_, _, err := newScripted(t, &pmxproto.Error{ID: 0, Code: pmxproto.ErrorBusy, Reason: "chunkbridge: too many connections (1024)"})
	if err == nil || !strings.Contains(err.Error(), "too many connections (1024)") || !errors.Is(err, pmxclient.ErrBusy) {
		t.Fatalf("Dial: %v, want ErrBusy with the server's reason", err)
	}
}

func TestDialTimesOutWithoutHello(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	silent := make(chan struct{}) // the server accepts and never says HELLO
	defer close(silent)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			<-silent
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := pmxclient.Dial(ctx, ln.Addr().String(), nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial: %v, want a deadline error", err)
	}
}

// TestIDsReusedOnlyAfterFinalReply: uploads are pipelined up to all 256
// ids; the 257th waits until an answer frees an id, and gets that id.
func TestIDsReusedOnlyAfterFinalReply(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	sent := make(chan error, 1)
	go func() {
		for i := range 300 {
			data, d := chunkOf(i)
			if err := c.Upload(ctx, d, data); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	var ids []uint8
	seen := map[uint8]bool{}
	for range 256 {
		p := s.read().(*pmxproto.UploadChunk)
		if seen[p.ID] {
			t.Fatalf("id %d reused while in flight", p.ID)
		}
		seen[p.ID] = true
		ids = append(ids, p.ID)
	}
	if !s.quiet(200 * time.Millisecond) {
		t.Fatal("a 257th request was sent while all ids were in flight")
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if err := c.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with uploads unanswered: %v", err)
	}
	cancel()
	s.send(&pmxproto.Ok{ID: ids[17]})
	p := s.read()
	if p.PacketID() != ids[17] {
		t.Fatalf("next request has id %d, want the freed id %d", p.PacketID(), ids[17])
	}
	ids = append(append(ids[:17], ids[18:]...), p.PacketID())
	// Answer in order until all 300 were sent and answered.
	for sentN, answered := 257, 1; answered < 300; answered++ {
		s.send(&pmxproto.Ok{ID: ids[0]})
		ids = ids[1:]
		if sentN < 300 {
			ids = append(ids, s.read().PacketID())
			sentN++
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestManyTransactions(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	for i := range 1000 {
		data, d := chunkOf(i)
		if err := c.Upload(ctx, d, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if n := p.Uploads(); n != 1000 {
		t.Fatalf("peer got %d uploads, want 1000", n)
	}
	// Hash lists, sequential: 300 more transactions.
	ds := p.Put("host/a/2026-01-01T00:00:00Z/x.didx", []byte("one"), []byte("two"))
	for range 300 {
		got, err := c.HashList(ctx, "host/a/2026-01-01T00:00:00Z/x.didx")
		if err != nil || len(got) != len(ds) {
			t.Fatalf("HashList: %v, %d digests", err, len(got))
		}
	}
}

func TestUploadDigestMismatch(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	data, _ := chunkOf(1)
	_, wrong := chunkOf(2)
	if err := c.Upload(ctx, wrong, data); err != nil {
		t.Fatal(err) // sent; the answer comes later
	}
	err := c.Wait(ctx)
	var se *pmxclient.ServerError
	if !errors.As(err, &se) || se.Code != pmxproto.ErrorGeneric || !strings.Contains(err.Error(), wrong.String()) ||
		!strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("Wait: %v, want a ServerError naming chunk %s and the reason", err, wrong)
	}
	// Reported once; the connection is still good.
	if err := c.Upload(ctx, sha256.Sum256(data), data); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestUploadFailsFastAfterRefusal(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	data, d := chunkOf(1)
	if err := c.Upload(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	p := s.read()
	s.send(&pmxproto.Error{ID: p.PacketID(), Code: pmxproto.ErrorGeneric, Reason: "disk full"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Upload(ctx, d, data)
		if err != nil {
			if !strings.Contains(err.Error(), "disk full") {
				t.Fatalf("Upload after a refusal: %v", err)
			}
			break
		}
		s.send(&pmxproto.Ok{ID: s.read().PacketID()})
		if time.Now().After(deadline) {
			t.Fatal("Upload kept succeeding after a refusal")
		}
	}
	if err := c.Wait(ctx); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Wait: %v", err)
	}
}

func TestHashList(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	var chunks [][]byte
	for i := range 10 {
		data, _ := chunkOf(i)
		chunks = append(chunks, data)
	}
	chunks = append(chunks, chunks[2]) // duplicates are listed
	path := "vm/100/2026-01-01T00:00:00Z/drive-scsi0.img.fidx"
	want := p.Put(path, chunks...)
	got, err := c.HashList(ctx, path) // 3 digests per part, then the empty part
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("HashList = %v, want %v", got, want)
	}

	p.Put("vm/100/2026-01-01T00:00:01Z/empty.fidx")
	if got, err := c.HashList(ctx, "vm/100/2026-01-01T00:00:01Z/empty.fidx"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("HashList of an empty file = %v, %v; want an empty list", got, err)
	}

	_, err = c.HashList(ctx, "vm/100/2026-01-01T00:00:00Z/nope.fidx")
	var se *pmxclient.ServerError
	if !errors.Is(err, pmxclient.ErrNotFound) || !errors.As(err, &se) || !strings.Contains(err.Error(), "nope.fidx") {
		t.Fatalf("HashList of a missing file: %v, want ErrNotFound naming it", err)
	}

	p.SetBusy(true)
	_, err = c.HashList(ctx, path)
	if !errors.Is(err, pmxclient.ErrBusy) || errors.Is(err, pmxclient.ErrNotFound) {
		t.Fatalf("HashList while busy: %v, want ErrBusy", err)
	}
}

func TestDownload(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	var chunks [][]byte
	for i := range 1000 { // several requests
		data, _ := chunkOf(i)
		chunks = append(chunks, data)
	}
	ds := p.Put("host/h/2026-01-01T00:00:00Z/f.didx", chunks...)
	var got bytes.Buffer
	next := 0
	err := c.Download(ctx, ds, func(i int, data []byte) error {
		if i != next {
			t.Fatalf("chunk %d handed out, want %d", i, next)
		}
		next++
		got.Write(data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := bytes.Join(chunks, nil); !bytes.Equal(got.Bytes(), want) {
		t.Fatal("downloaded data differs")
	}
}

func TestDownloadRejectsCorruptChunk(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	var chunks [][]byte
	for i := range 8 {
		data, _ := chunkOf(i)
		chunks = append(chunks, data)
	}
	ds := p.Put("host/h/2026-01-01T00:00:00Z/f.didx", chunks...)
	p.SetCorrupt(func(d pmxproto.Digest, data []byte) []byte {
		if d == ds[5] {
			data[0] ^= 1
		}
		return data
	})
	var handed []int
	err := c.Download(ctx, ds, func(i int, data []byte) error {
		handed = append(handed, i)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "chunk 5") || !strings.Contains(err.Error(), ds[5].String()) {
		t.Fatalf("Download of a corrupt chunk: %v, want an error naming chunk 5", err)
	}
	if fmt.Sprint(handed) != "[0 1 2 3 4]" {
		t.Fatalf("handed out %v, want only the chunks before the corrupt one", handed)
	}
	// The client stays usable: the request's remaining chunks are drained.
	p.SetCorrupt(nil)
	n := 0
	if err := c.Download(ctx, ds, func(int, []byte) error { n++; return nil }); err != nil || n != len(ds) {
		t.Fatalf("Download after a refused chunk: %v, %d chunks", err, n)
	}
}

func TestDownloadMissingChunk(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	a, da := chunkOf(1)
	p.Put("x", a)
	_, missing := chunkOf(2)
	var handed []int
	err := c.Download(ctx, []pmxproto.Digest{da, missing, da}, func(i int, _ []byte) error {
		handed = append(handed, i)
		return nil
	})
	var se *pmxclient.ServerError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), missing.String()) {
		t.Fatalf("Download with a missing chunk: %v", err)
	}
	if fmt.Sprint(handed) != "[0]" {
		t.Fatalf("handed out %v, want [0]", handed)
	}
}

func TestDownloadServerSendsWrongOffset(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	a, da := chunkOf(1)
	b, db := chunkOf(2)
	errc := make(chan error, 1)
	go func() { errc <- c.Download(ctx, []pmxproto.Digest{da, db}, func(int, []byte) error { return nil }) }()
	req := s.read().(*pmxproto.DownloadChunks)
	s.send(&pmxproto.Chunk{ID: req.ID, Offset: 1, Digest: db, Data: b}, &pmxproto.Chunk{ID: req.ID, Offset: 0, Digest: da, Data: a})
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "offset 1") {
		t.Fatalf("Download with chunks out of order: %v", err)
	}
}

func TestStreamRefusedEntry(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx := ctxT(t)
	st, err := c.CreateBackup(ctx, pmxclient.BackupSpec{Type: pmxproto.BackupVM, ID: "100", Name: "disk.img",
		Time: time.Unix(1e9, 0), Fixed: true, ChunkSize: 4, FileSize: 8, Exclusive: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := "vm/100/2001-09-09T01:46:40Z/disk.img.fidx"; st.Path() != want {
		t.Fatalf("Path = %q, want %q", st.Path(), want)
	}
	_, missing := chunkOf(1)
	if err := st.Fixed(ctx, 0, missing); err != nil {
		t.Fatal(err) // not answered; reported later
	}
	_, err = st.Finish(ctx)
	if err == nil || !strings.Contains(err.Error(), "not stored") {
		t.Fatalf("Finish after a refused entry: %v", err)
	}
	if _, ok := p.File(st.Path()); ok {
		t.Fatal("a file with a refused entry was published")
	}
	// EXCL: the snapshot exists now.
	_, err = c.CreateBackup(ctx, pmxclient.BackupSpec{Type: pmxproto.BackupVM, ID: "100", Name: "other.img",
		Time: time.Unix(1e9, 0), Fixed: true, ChunkSize: 4, FileSize: 8, Exclusive: true})
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("CreateBackup of an existing snapshot: %v", err)
	}
	// The connection is still good.
	data, d := chunkOf(3)
	if err := c.Upload(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStreamIDRetiredAfterError: after an Error on a file stream, more
// Errors for it may follow; its id must not be handed to a new request.
func TestStreamIDRetiredAfterError(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	created := make(chan *pmxclient.Stream, 1)
	go func() {
		st, err := c.CreateBackup(ctx, pmxclient.BackupSpec{Type: pmxproto.BackupHost, ID: "h", Name: "f", Exclusive: true})
		if err != nil {
			t.Error(err)
		}
		created <- st
	}()
	cb := s.read().(*pmxproto.CreateBackup)
	s.send(&pmxproto.BackupCreated{ID: cb.ID, Path: "host/h/t/f.didx"})
	st := <-created
	if st == nil {
		t.FailNow()
	}
	_, d := chunkOf(1)
	st.Dynamic(ctx, 0, d)
	st.Dynamic(ctx, 10, d)
	finished := make(chan error, 1)
	go func() { _, err := st.Finish(ctx); finished <- err }()
	for range 3 {
		s.read() // two entries, BackupFinished
	}
	s.send(&pmxproto.Error{ID: cb.ID, Reason: "entry 0 refused"})
	if err := <-finished; err == nil || !strings.Contains(err.Error(), "entry 0 refused") {
		t.Fatalf("Finish: %v", err)
	}
	s.send(&pmxproto.Error{ID: cb.ID, Reason: "entry 1 refused"}, &pmxproto.Error{ID: cb.ID, Reason: "finish refused"})
	// 255 more transactions must not use the stream's id.
	go func() {
		for i := range 255 {
			data, d := chunkOf(i)
			c.Upload(ctx, d, data)
		}
	}()
	for range 255 {
		if p := s.read(); p.PacketID() == cb.ID {
			t.Fatalf("retired stream id %d reused", cb.ID)
		}
	}
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

func TestProtocolViolationEndsConnection(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	s.send(&pmxproto.Ok{ID: 42})
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("an Ok for nothing in flight did not end the connection")
	}
	if err := c.Err(); err == nil || !strings.Contains(err.Error(), "id 42") {
		t.Fatalf("Err = %v", err)
	}
	if _, err := c.HashList(ctxT(t), "x"); err == nil {
		t.Fatal("request on a dead connection succeeded")
	}
}

func TestCloseFailsPendingRequests(t *testing.T) {
	c, s, err := newScripted(t, helloV1())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := c.HashList(ctx, "host/x/latest/y.didx")
		errs <- err
	}()
	s.read()
	data, d := chunkOf(1)
	if err := c.Upload(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	s.read()
	c.Close()
	wg.Wait()
	if err := <-errs; !errors.Is(err, pmxclient.ErrClosed) {
		t.Fatalf("HashList after Close: %v", err)
	}
	if err := c.Wait(ctx); !errors.Is(err, pmxclient.ErrClosed) {
		t.Fatalf("Wait after Close: %v", err)
	}
}
