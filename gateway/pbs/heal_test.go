package pbs_test

import (
	"bytes"
	"crypto/sha256"
	"net/http"
	"strings"
	"testing"
	"time"

	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
)

// After verify quarantines a chunk of the previous snapshot, the next
// incremental backup is not offered that snapshot's index: the client
// uploads the archive whole, the chunk is stored again, and the new
// snapshot restores. Without it the client appends the gone chunk unsent
// and the backup fails at close, every time.
func TestPreviousHealsAfterQuarantine(t *testing.T) {
	h := newHarness(t)
	t1 := time.Now().Add(-time.Hour).Unix()
	data := makeChunks(3, 6, 64<<10)
	if n := backupRun(t, h, t1, data); n != 6 {
		t.Fatalf("first backup uploaded %d chunks, want 6", n)
	}
	// Rot one chunk and quarantine it, as verify does.
	victim := chunkclient.ID(sha256.Sum256(data[2]))
	if err := h.store.Put(t.Context(), victim.Key(), strings.NewReader("rotten"), 6, nil); err != nil {
		t.Fatal(err)
	}
	if key, err := h.svcs.Chunks.Quarantine(t.Context(), victim, "test"); err != nil || key == "" {
		t.Fatalf("quarantine: %q, %v", key, err)
	}

	s := h.backup(t, t1+60)
	if st, out := s.Call("GET", "/previous?archive-name=root.pxar.didx", nil); st != http.StatusNotFound || !strings.Contains(string(out), "1 of the 6 chunks") {
		t.Fatalf("previous with a quarantined chunk: %d %.300q", st, out)
	}
	if n := s.Backup("root.pxar.didx", "web1", t1+60, data, map[string]bool{}, zstdFrame); n != 6 {
		t.Fatalf("healing backup uploaded %d chunks, want 6", n)
	}
	if _, err := h.store.Stat(t.Context(), victim.Key()); err != nil {
		t.Fatalf("the quarantined chunk was not stored again: %v", err)
	}
	r, err := h.open(t, "/api2/json/reader", pbs.ReaderProtocol, snapQuery(t1+60))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Restore("root.pxar.didx"); !bytes.Equal(got, bytes.Join(data, nil)) {
		t.Fatal("restored data differs")
	}
	// Healed: the next backup is incremental again.
	if n := backupRun(t, h, t1+120, data); n != 0 {
		t.Fatalf("backup after healing uploaded %d chunks, want 0", n)
	}
}
