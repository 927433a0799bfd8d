package storagetest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/fs"
)

// Overwrite replaces a stored object's bytes behind the store's back, as
// bit rot or a stray writer would, for tests of damage: on a directory
// store the file is rewritten in place (its extended attributes stay),
// elsewhere the object is replaced with the same metadata.
func Overwrite(t testing.TB, store storage.Store, key string, data []byte) {
	t.Helper()
	if d, ok := store.(*fs.Store); ok {
		if err := os.WriteFile(filepath.Join(d.Root(), filepath.FromSlash(key)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	info, err := store.Stat(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(t.Context(), key, bytes.NewReader(data), int64(len(data)), info.Metadata); err != nil {
		t.Fatal(err)
	}
}
