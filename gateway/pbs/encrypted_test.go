package pbs_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// fakeKey stands for a client's encryption key: the server never sees a
// key, so the test's "ciphertext" need only look like it.
var fakeKey = []byte("not a real key")

// sealedChunk is what a client with crypt-mode encrypt sends for data:
// the keyed digest and an encrypted DataBlob (every other one of the
// encrypted+zstd kind, whose payload the server cannot check either).
func sealedChunk(t testing.TB, data []byte, i int) (digest [32]byte, blob []byte) {
	t.Helper()
	m := hmac.New(sha256.New, fakeKey)
	m.Write(data)
	copy(digest[:], m.Sum(nil))
	ct := make([]byte, len(data))
	for j := range data {
		ct[j] = data[j] ^ fakeKey[j%len(fakeKey)]
	}
	kind := datablob.Encrypted
	if i%2 == 1 {
		kind, ct = datablob.EncryptedZstd, ct[:len(ct)/2+1]
	}
	blob, err := datablob.Blob{Kind: kind, IV: [datablob.IVSize]byte{byte(i)}, Tag: [datablob.TagSize]byte{9}, Payload: ct}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return digest, blob
}

// archive is one dynamic archive as a client writes it.
type archive struct {
	name      string
	encrypted bool
	digests   [][32]byte
	blobs     [][]byte
	sizes     []int
}

func newArchive(t testing.TB, name string, encrypted bool, chunks [][]byte) *archive {
	a := &archive{name: name, encrypted: encrypted}
	for i, c := range chunks {
		d, b := sha256.Sum256(c), chunkBlob(t, c, i%2 == 0)
		if encrypted {
			d, b = sealedChunk(t, c, i)
		}
		a.digests, a.blobs, a.sizes = append(a.digests, d), append(a.blobs, b), append(a.sizes, len(c))
	}
	return a
}

// write uploads the archive's chunks (those not in known), appends them
// and closes it; it returns the close's status and the csum.
func (a *archive) write(s *pbstest.Session, known map[[32]byte]bool) (int, [32]byte) {
	wid := dynamicWriter(s, a.name)
	var digests []string
	var offsets []uint64
	var off uint64
	csum := pbsidx.NewCsum()
	for i, d := range a.digests {
		if !known[d] {
			s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, d, a.sizes[i], len(a.blobs[i])), a.blobs[i])
		}
		digests = append(digests, hex.EncodeToString(d[:]))
		offsets = append(offsets, off)
		off += uint64(a.sizes[i])
		csum.AddEntry(off, d)
	}
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
	sum := csum.Sum()
	st, _ := s.Call("POST", "/dynamic_close", map[string]any{"wid": wid, "chunk-count": len(digests), "size": off, "csum": hex.EncodeToString(sum[:])})
	return st, sum
}

func manifestBlob(epoch int64, archives ...*archive) []byte {
	var files []string
	for _, a := range archives {
		mode := "none"
		if a.encrypted {
			mode = "encrypt"
		}
		files = append(files, fmt.Sprintf(`{"filename":%q,"crypt-mode":%q,"size":1,"csum":""}`, a.name, mode))
	}
	mb, _ := datablob.EncodeRaw([]byte(fmt.Sprintf(`{"backup-type":"host","backup-id":"web1","backup-time":%d,"files":[%s],"unprotected":{},"signature":null}`, epoch, strings.Join(files, ","))))
	return mb
}

func keys(t testing.TB, st storage.Store, prefix string) []string {
	t.Helper()
	var out []string
	if err := st.List(t.Context(), prefix, func(i storage.Info) error { out = append(out, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// An encrypted archive and a plain one in one snapshot: the encrypted
// chunks are stored as sent, apart from plain chunks (the same bytes sent
// both ways are two objects), restored through the reader as they were
// sent, listed as crypt-mode encrypt, reused by an incremental backup, and
// never served to casync.
func TestEncryptedBackupRestore(t *testing.T) {
	h := newHarness(t)
	epoch := time.Now().Add(-time.Hour).Unix()
	data := makeChunks(1, 5, 32<<10)
	enc := newArchive(t, "root.pxar.didx", true, data)
	// The plain archive shares its first chunk's bytes with the encrypted
	// one, and the encrypted one names a chunk by the plain digest.
	plain := newArchive(t, "etc.pxar.didx", false, append([][]byte{enc.blobs[0]}, makeChunks(2, 3, 16<<10)...))
	enc.digests[4] = plain.digests[0]
	enc.blobs[4] = enc.blobs[0]
	enc.sizes[4] = enc.sizes[0]

	s := h.backup(t, epoch)
	for _, a := range []*archive{enc, plain} {
		if st, _ := a.write(s, map[[32]byte]bool{}); st != http.StatusOK {
			t.Fatalf("close %s: %d", a.name, st)
		}
	}
	mb := manifestBlob(epoch, enc, plain)
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	s.OK("POST", "/finish", nil)

	// Two objects for the one digest: a zstd frame and the DataBlob.
	shared := plain.digests[0]
	id := chunkclient.ID(shared)
	plainObj, _, err := h.store.Get(t.Context(), id.Key())
	if err != nil {
		t.Fatalf("the plain chunk: %v", err)
	}
	plainObj.Close()
	got, _, err := h.store.Get(t.Context(), chunk.EncryptedPrefix+id.Key())
	if err != nil {
		t.Fatalf("the encrypted chunk: %v", err)
	}
	var stored bytes.Buffer
	stored.ReadFrom(got)
	got.Close()
	if !bytes.Equal(stored.Bytes(), enc.blobs[0]) {
		t.Fatal("the encrypted chunk is not stored as sent")
	}
	if n := len(keys(t, h.store, chunk.EncryptedPrefix+"chunks/")); n != 5 {
		t.Fatalf("%d encrypted objects, want 5", n)
	}

	// Restored as sent.
	r, err := h.open(t, "/api2/json/reader", pbs.ReaderProtocol, snapQuery(epoch))
	if err != nil {
		t.Fatal(err)
	}
	d, err := pbsidx.ParseDynamic(r.OK("GET", "/download?file-name=root.pxar.didx", nil), 0)
	if err != nil || len(d.Entries) != 5 {
		t.Fatalf("the encrypted index: %v", err)
	}
	for i, e := range d.Entries {
		if e.Digest != enc.digests[i] {
			t.Fatalf("entry %d: digest %x, want %x", i, e.Digest, enc.digests[i])
		}
		if b := r.OK("GET", "/chunk?digest="+hex.EncodeToString(e.Digest[:]), nil); !bytes.Equal(b, enc.blobs[i]) {
			t.Fatalf("encrypted chunk %d is not served as it was sent", i)
		}
	}
	if !bytes.Equal(r.Restore("etc.pxar.didx"), bytes.Join(append([][]byte{enc.blobs[0]}, makeChunks(2, 3, 16<<10)...), nil)) {
		t.Fatal("the plain archive restores different data")
	}

	// Listed as encrypted.
	snaps, err := chunkclient.NewCatalogGRPC(h.svcs.Conn).ListSnapshots(t.Context(), "", "host", "web1")
	if err != nil || len(snaps) != 1 {
		t.Fatalf("list: %v %v", snaps, err)
	}
	for _, f := range snaps[0].GetFiles() {
		if f.GetEncrypted() != (f.GetName() == "root.pxar.didx") {
			t.Fatalf("file %s: encrypted %v", f.GetName(), f.GetEncrypted())
		}
	}

	// An incremental backup appends the previous encrypted chunks unsent;
	// a plain archive cannot append them.
	s2 := h.backup(t, epoch+60)
	s2.OK("GET", "/previous?archive-name=root.pxar.didx", nil)
	before := h.svcs.Chunks.Counters().Written
	known := map[[32]byte]bool{}
	for _, d := range enc.digests {
		known[d] = true
	}
	if st, _ := enc.write(s2, known); st != http.StatusOK {
		t.Fatalf("incremental close: %d", st)
	}
	wid := dynamicWriter(s2, "other.pxar.didx")
	pc := makeChunks(3, 1, 1000)[0]
	pd := sha256.Sum256(pc)
	pb := chunkBlob(t, pc, false)
	s2.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, pd, len(pc), len(pb)), pb)
	if st, _ := s2.Call("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": []string{hex.EncodeToString(pd[:]), hex.EncodeToString(enc.digests[1][:])}, "offset-list": []uint64{0, uint64(len(pc))}}); st != http.StatusBadRequest {
		t.Fatalf("a plain archive appended an encrypted chunk: %d", st)
	}
	if n := h.svcs.Chunks.Counters().Written - before; n != 1 {
		t.Fatalf("the incremental backup wrote %d chunks, want the 1 plain one", n)
	}

	// casync is refused the encrypted file's index, with a reason.
	cs := httptest.NewServer(&casync.HTTPStore{Chunks: chunkclient.NewLocal(h.svcs.Chunks, 0), Catalog: chunkclient.NewCatalogGRPC(h.svcs.Conn)})
	defer cs.Close()
	dir := time.Unix(epoch, 0).UTC().Format(time.RFC3339)
	resp, err := http.Get(cs.URL + "/indexes/snapshots/host/web1/" + dir + "/root.pxar.caibx")
	if err != nil {
		t.Fatal(err)
	}
	var msg bytes.Buffer
	msg.ReadFrom(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(msg.String(), "encrypted PBS archive") {
		t.Fatalf("casync GET of an encrypted index: %d %q", resp.StatusCode, msg.String())
	}
	if resp, err := http.Get(cs.URL + "/indexes/snapshots/host/web1/" + dir + "/etc.pxar.caibx"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("casync GET of the plain index: %v %v", resp, err)
	}
}

// A chunk whose CRC is wrong is refused and stored nowhere; an archive
// cannot mix encrypted and plain chunks; a manifest whose crypt-mode
// disagrees with the chunks is refused at finish and nothing is listed.
func TestEncryptedBackupRefusals(t *testing.T) {
	h := newHarness(t)
	epoch := time.Now().Add(-time.Hour).Unix()
	s := h.backup(t, epoch)
	wid := dynamicWriter(s, "root.pxar.didx")
	c := makeChunks(4, 1, 4096)[0]
	d, b := sealedChunk(t, c, 0)
	bad := slices.Clone(b)
	bad[len(bad)-1] ^= 1
	if st, _ := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, d, len(c), len(bad)), bad); st != http.StatusBadRequest {
		t.Fatalf("a chunk with a wrong CRC: %d", st)
	}
	if st, _ := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, d, len(c)+1, len(b)), b); st != http.StatusBadRequest {
		t.Fatalf("ciphertext of another size than declared: %d", st)
	}
	if k := keys(t, h.store, ""); slices.ContainsFunc(k, func(k string) bool { return strings.Contains(k, "chunks/") }) {
		t.Fatalf("refused chunks were stored: %v", k)
	}
	s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, d, len(c), len(b)), b)
	pb := chunkBlob(t, c, false)
	pd := sha256.Sum256(c)
	if st, _ := s.Call("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, pd, len(c), len(pb)), pb); st != http.StatusBadRequest {
		t.Fatalf("a plain chunk in an encrypted archive: %d", st)
	}
	a := &archive{name: "root.pxar.didx", encrypted: true, digests: [][32]byte{d}, blobs: [][]byte{b}, sizes: []int{len(c)}}
	sum := pbsidx.NewCsum()
	sum.AddEntry(uint64(len(c)), d)
	cs := sum.Sum()
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": []string{hex.EncodeToString(d[:])}, "offset-list": []uint64{0}})
	s.OK("POST", "/dynamic_close", map[string]any{"wid": wid, "chunk-count": 1, "size": len(c), "csum": hex.EncodeToString(cs[:])})
	a.encrypted = false // the manifest says crypt-mode none
	mb := manifestBlob(epoch, a)
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	if st, body := s.Call("POST", "/finish", nil); st != http.StatusBadRequest || !strings.Contains(string(body), "crypt-mode") {
		t.Fatalf("finish with a manifest that disagrees: %d %s", st, body)
	}
	snaps, err := h.pbsSnapshots(t)
	if err != nil || len(snaps) != 0 {
		t.Fatalf("a refused backup is listed: %v %v", snaps, err)
	}
}

// pbsSnapshots lists the snapshots PBS clients see (those with a
// manifest).
func (h *harness) pbsSnapshots(t testing.TB) ([]string, error) {
	snaps, err := chunkclient.NewCatalogGRPC(h.svcs.Conn).ListSnapshots(t.Context(), "", "host", "web1")
	var out []string
	for _, sn := range snaps {
		for _, b := range sn.GetBlobs() {
			if b.GetName() == "index.json.blob" {
				out = append(out, sn.GetTime().AsTime().String())
			}
		}
	}
	return out, err
}
