package fs_test

import (
	"os"
	"path/filepath"
	"strings"
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
