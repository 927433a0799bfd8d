package fs_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := fs.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// The fallback through named temporary files keeps the same contract.
func TestConformanceWithoutTmpfile(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := fs.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return fs.WithoutTmpfile(s)
	})
}

// The directory is a casync store: keys are plain files at their paths, and
// no temporary file survives a put.
func TestLayout(t *testing.T) {
	dir := t.TempDir()
	s, err := fs.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fs.UsesTmpfile(s) {
		t.Log("O_TMPFILE is not available here: puts use named temporary files")
	}
	key := "chunks/0a1b/0a1b" + strings.Repeat("0", 60) + ".cacnk"
	if _, err := s.PutIfAbsent(t.Context(), key, strings.NewReader("data"), 4, storage.Metadata{"size": "4"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(key))); err != nil || string(b) != "data" {
		t.Fatalf("file at the key's path: %q, %v", b, err)
	}
	tmp, _ := os.ReadDir(filepath.Join(dir, ".chunkbridge-tmp"))
	if len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	if _, err := s.Stat(t.Context(), ".chunkbridge-tmp/x"); err == nil {
		t.Fatal("the temporary folder is reachable as a key")
	}
}

func TestOpenRefusesUnusableDirectory(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := fs.Open(file)
	if err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("Open(a regular file) = %v, want an error naming it", err)
	}
}

// Open's reader is a *fs.File: read as net/http reads a response body
// (its first 512 bytes, then the rest to the socket, which takes the
// descriptor for sendfile), it gives the object; closed, it refuses more.
func TestOpenReaderToSocket(t *testing.T) {
	s, err := fs.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 100<<10)
	for i := range want {
		want[i] = byte(i * 7)
	}
	ctx := t.Context()
	if _, err := s.PutIfAbsent(ctx, "chunks/abcd/x.cacnk", bytes.NewReader(want), int64(len(want)), nil); err != nil {
		t.Fatal(err)
	}
	rc, size, err := s.Open(ctx, "chunks/abcd/x.cacnk")
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(want)) {
		t.Fatalf("size %d, want %d", size, len(want))
	}
	f, ok := rc.(*fs.File)
	if !ok {
		t.Fatalf("Open's reader is %T, want *fs.File", rc)
	}
	if _, ok := rc.(syscall.Conn); !ok {
		t.Fatal("Open's reader is no syscall.Conn: sendfile would not take it")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 512)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	c.Write(head)
	n, err := c.(*net.TCPConn).ReadFrom(&io.LimitedReader{R: f, N: size - 512})
	if err != nil || n != size-512 {
		t.Fatalf("ReadFrom: %d, %v; want %d", n, err, size-512)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the socket got %d bytes, not the object's %d", len(b), len(want))
	}
	if n, err := f.Read(head); n != 0 || err != io.EOF {
		t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(head); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Close: %v, want os.ErrClosed", err)
	}
}
