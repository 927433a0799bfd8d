package pbs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
)

// finishImage uploads the manifest of a one-image vm/100 snapshot and
// finishes.
func finishImage(t *testing.T, s *pbstest.Session, epoch int64) {
	t.Helper()
	mb, _ := datablob.EncodeRaw([]byte(fmt.Sprintf(`{"backup-type":"vm","backup-id":"100","backup-time":%d,"files":[],"unprotected":{},"signature":null}`, epoch)))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	s.OK("POST", "/finish", nil)
}

// reuse-csum, as Proxmox VE's dirty-bitmap backups use it: the new fixed
// index starts as a copy of the previous one, the client sends only the
// changed chunks, and the result restores as the changed image. A wrong
// csum, a changed size, or no previous backup are refused, and nothing is
// stored.
func TestReuseCsum(t *testing.T) {
	h := newHarness(t)
	t1 := time.Now().Add(-time.Hour).Unix()
	vm := func(epoch int64) *pbstest.Session {
		t.Helper()
		s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, pbstest.Query("default", "vm", "100", epoch))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	fixedWriter := func(s *pbstest.Session, params map[string]any) (int, int, []byte) {
		var wid int
		st, out := s.Call("POST", "/fixed_index", params)
		json.Unmarshal(out, &struct{ Data *int }{&wid})
		return wid, st, out
	}
	img := make([]byte, 4*4<<20+1000)
	rand.Read(img)

	// No previous backup: nothing to reuse.
	s := vm(t1)
	if _, st, out := fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": strings.Repeat("00", 32)}); st != http.StatusBadRequest || !strings.Contains(string(out), "no previous backup") {
		t.Fatalf("reuse without a previous backup: %d %s", st, out)
	}
	wid, _, _ := fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img)})
	digests, offsets, sum := uploadFixed(t, s, wid, img, true)
	s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": len(digests), "size": len(img), "csum": hex.EncodeToString(sum[:])})
	finishImage(t, s, t1)

	// The client's csum comes from the previous index it downloads.
	s = vm(t1 + 60)
	prev, err := pbsidx.ParseFixed(s.OK("GET", "/previous?archive-name=drive-scsi0.img.fidx", nil), 0)
	if err != nil {
		t.Fatal(err)
	}
	prevSum := prev.Csum()
	if prevSum != sum {
		t.Fatalf("previous index csum %x, want %x", prevSum, sum)
	}
	// Two chunks change: slot 1 and the short last one.
	changed := bytes.Clone(img)
	rand.Read(changed[4<<20+10 : 4<<20+20])
	rand.Read(changed[len(changed)-5:])
	wid, st, out := fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(sum[:])})
	if st != http.StatusOK {
		t.Fatalf("reuse-csum: %d %s", st, out)
	}
	var sentBytes int
	newDigests := append([]string{}, digests...)
	for _, slot := range []int{1, 4} {
		c := changed[slot*4<<20 : min((slot+1)*4<<20, len(changed))]
		d := sha256.Sum256(c)
		b := chunkBlob(t, c, false)
		s.OK("POST", fmt.Sprintf("/fixed_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, d, len(c), len(b)), b)
		s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": []string{hex.EncodeToString(d[:])}, "offset-list": []int{slot * 4 << 20}})
		newDigests[slot] = hex.EncodeToString(d[:])
		sentBytes += len(c)
	}
	c := pbsidx.NewCsum()
	for _, d := range newDigests {
		id, _ := chunkclient.ParseID(d)
		c.AddDigest(pbsidx.Digest(id))
	}
	newSum := c.Sum()
	// chunk-count counts this session's appends, as upstream.
	if st, out := s.Call("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": 2, "size": sentBytes, "csum": strings.Repeat("00", 32)}); st != http.StatusBadRequest || !strings.Contains(string(out), "csum") {
		t.Fatalf("a wrong csum at close: %d %s", st, out)
	}
	wid, _, _ = fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(sum[:])})
	for _, slot := range []int{1, 4} {
		s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": []string{newDigests[slot]}, "offset-list": []int{slot * 4 << 20}})
	}
	// proxmox-backup-qemu sends the bytes it appended as size.
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": 2, "size": sentBytes, "csum": hex.EncodeToString(newSum[:])})
	finishImage(t, s, t1+60)

	r, err := h.open(t, "/api2/json/reader", pbs.ReaderProtocol, pbstest.Query("default", "vm", "100", t1+60))
	if err != nil {
		t.Fatal(err)
	}
	f, err := pbsidx.ParseFixed(r.OK("GET", "/download?file-name=drive-scsi0.img.fidx", nil), 0)
	if err != nil || f.Size != uint64(len(img)) {
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
	if !bytes.Equal(got, changed) {
		t.Fatal("the restored image differs from the changed one")
	}

	// A wrong reuse-csum, or another size: refused, nothing stored.
	s = vm(t1 + 120)
	if _, st, out := fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(sum[:])}); st != http.StatusBadRequest || !strings.Contains(string(out), "does not match") {
		t.Fatalf("a stale reuse-csum: %d %s", st, out)
	}
	if _, st, out := fixedWriter(s, map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img) + 1, "reuse-csum": hex.EncodeToString(newSum[:])}); st != http.StatusBadRequest || !strings.Contains(string(out), "not 16778217 bytes") {
		t.Fatalf("reuse with another size: %d %s", st, out)
	}
	if _, st, out := fixedWriter(s, map[string]any{"archive-name": "drive-scsi1.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(newSum[:])}); st != http.StatusBadRequest || !strings.Contains(string(out), "no such archive") {
		t.Fatalf("reuse of an archive the previous backup lacks: %d %s", st, out)
	}
	if st, out := s.Call("POST", "/finish", nil); st != http.StatusBadRequest {
		t.Fatalf("finish with nothing written: %d %s", st, out)
	}
	snaps, err := chunkclient.NewCatalogGRPC(h.svcs.Conn).ListSnapshots(context.Background(), "", "vm", "100")
	if err != nil || len(snaps) != 2 {
		t.Fatalf("snapshots after the refusals: %v, %v", snaps, err)
	}
}

// A reused index's entries count against MaxEntries as appended ones: the
// copy holds no more than a session may.
func TestReuseCsumCountsEntries(t *testing.T) {
	h := newHarnessWith(t, func(s *pbs.Server) { s.MaxEntries = 4 })
	t1 := time.Now().Add(-time.Hour).Unix()
	img := make([]byte, 3*4<<20+100) // 4 slots
	rand.Read(img)
	open := func(epoch int64) *pbstest.Session {
		s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, pbstest.Query("default", "vm", "100", epoch))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open(t1)
	var wid int
	json.Unmarshal(s.OK("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img)}), &struct{ Data *int }{&wid})
	digests, offsets, sum := uploadFixed(t, s, wid, img, false)
	s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": 4, "size": len(img), "csum": hex.EncodeToString(sum[:])})
	finishImage(t, s, t1)

	// One entry held by another open index: the copy's 4 do not fit.
	s = open(t1 + 60)
	dw := dynamicWriter(s, "other.didx")
	c := []byte("one chunk")
	d := sha256.Sum256(c)
	b := chunkBlob(t, c, false)
	s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", dw, d, len(c), len(b)), b)
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": dw, "digest-list": []string{hex.EncodeToString(d[:])}, "offset-list": []int{0}})
	if st, out := s.Call("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(sum[:])}); st != http.StatusServiceUnavailable || !strings.Contains(string(out), "reusing") {
		t.Fatalf("a copy past MaxEntries: %d %s", st, out)
	}
	// Once the other index is closed, the copy fits.
	dsum := pbsidx.NewCsum()
	dsum.AddEntry(uint64(len(c)), d)
	ds := dsum.Sum()
	s.OK("POST", "/dynamic_close", map[string]any{"wid": dw, "chunk-count": 1, "size": len(c), "csum": hex.EncodeToString(ds[:])})
	s.OK("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img), "reuse-csum": hex.EncodeToString(sum[:])})
}

// reuse-csum reuses the previous index of the session's own namespace: the
// same vm/100 in the root and in namespace a are two groups, each reused
// only by its own next backup.
func TestReuseCsumInNamespace(t *testing.T) {
	h := newHarness(t)
	if err := chunkclient.NewCatalogGRPC(h.svcs.Conn).CreateNamespace(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now().Add(-time.Hour).Unix()
	open := func(ns string, epoch int64) *pbstest.Session {
		t.Helper()
		q := pbstest.Query("default", "vm", "100", epoch)
		if ns != "" {
			q.Set("ns", ns)
		}
		s, err := h.open(t, "/api2/json/backup", pbs.BackupProtocol, q)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	sums := map[string][32]byte{}
	for _, ns := range []string{"", "a"} {
		img := make([]byte, 2*4<<20)
		rand.Read(img)
		s := open(ns, t1)
		var wid int
		json.Unmarshal(s.OK("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": len(img)}), &struct{ Data *int }{&wid})
		digests, offsets, sum := uploadFixed(t, s, wid, img, false)
		s.OK("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
		s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": len(digests), "size": len(img), "csum": hex.EncodeToString(sum[:])})
		finishImage(t, s, t1)
		sums[ns] = sum
	}
	s := open("a", t1+60)
	root, own := sums[""], sums["a"]
	if st, out := s.Call("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": 2 * 4 << 20, "reuse-csum": hex.EncodeToString(root[:])}); st != http.StatusBadRequest || !strings.Contains(string(out), "does not match") {
		t.Fatalf("reuse in namespace a of the root's csum: %d %s", st, out)
	}
	var wid int
	json.Unmarshal(s.OK("POST", "/fixed_index", map[string]any{"archive-name": "drive-scsi0.img.fidx", "size": 2 * 4 << 20, "reuse-csum": hex.EncodeToString(own[:])}), &struct{ Data *int }{&wid})
	s.OK("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": 0, "size": 0, "csum": hex.EncodeToString(own[:])})
	finishImage(t, s, t1+60)
}
