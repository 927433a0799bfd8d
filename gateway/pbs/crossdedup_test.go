package pbs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// A fixed image backed up through the PBS gateway (4 MiB chunks) and then
// with PMXBCKUP --fixed (4 MiB blocks by default) shares every chunk: the
// second backup stores nothing new (README, "Which protocols
// deduplicate").
func TestFixedImageDedupsAcrossPBSAndPMXBCKUP(t *testing.T) {
	h := newHarness(t)
	img := make([]byte, 10<<20+77)
	rand.Read(img)
	epoch := time.Now().Add(-time.Hour).Unix()
	s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	var wid int
	json.Unmarshal(s.OK("POST", "/fixed_index", map[string]any{"archive-name": "disk.img.fidx", "size": len(img)}), &struct{ Data *int }{&wid})
	digests, offsets, sum := uploadFixed(t, s, wid, img, true)
	s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": len(digests), "size": len(img), "csum": hex.EncodeToString(sum[:])})
	mb, _ := datablob.EncodeRaw([]byte(fmt.Sprintf(`{"backup-type":"host","backup-id":"web1","backup-time":%d,"files":[],"unprotected":{},"signature":null}`, epoch)))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	s.OK("POST", "/finish", nil)
	before := h.svcs.Chunks.Counters()
	if before.Written != int64(len(digests)) {
		t.Fatalf("the PBS backup wrote %d chunks, want %d", before.Written, len(digests))
	}

	srv := &pmx.Server{Chunks: chunkclient.NewLocal(h.svcs.Chunks, 0), Catalog: chunkclient.NewCatalogGRPC(h.svcs.Conn)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	c, err := pmxclient.Dial(t.Context(), ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := pmxclient.Backup(t.Context(), c, pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "100", Name: "disk", Fixed: true,
		Input: bytes.NewReader(img), Size: int64(len(img))}); err != nil {
		t.Fatal(err)
	}
	after := h.svcs.Chunks.Counters()
	if after.Written != before.Written || after.Deduplicated-before.Deduplicated != int64(len(digests)) {
		t.Fatalf("the PMXBCKUP --fixed backup of the same image wrote %d new chunks and found %d stored; want 0 and %d",
			after.Written-before.Written, after.Deduplicated-before.Deduplicated, len(digests))
	}
}
