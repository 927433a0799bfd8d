// Package pbstest is a PBS protocol client for tests: the upgrade by hand
// (no Host header, as the Go client sends it), then HTTP/2 with
// golang.org/x/net/http2 on the same connection, and a whole backup.
package pbstest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"

	"golang.org/x/net/http2"

	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
)

// Session is one upgraded connection.
type Session struct {
	t  testing.TB
	cc *http2.ClientConn
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Open upgrades a connection to addr on path with proto ("" authorization
// sends none). A refusal is an error "STATUS body".
func Open(t testing.TB, addr, path, proto, authorization string, q url.Values) (*Session, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := fmt.Sprintf("GET %s?%s HTTP/1.1\r\nUpgrade: %s\r\nConnection: upgrade\r\n", path, q.Encode(), proto)
	if authorization != "" {
		req += "Authorization: " + authorization + "\r\n"
	}
	io.WriteString(conn, req+"\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%d %s", resp.StatusCode, body)
	}
	cc, err := (&http2.Transport{}).NewClientConn(bufConn{conn, br})
	if err != nil {
		t.Fatal(err)
	}
	return &Session{t: t, cc: cc}, nil
}

// Call sends one request; a body that is not []byte or an io.Reader goes
// as JSON. It is
// safe from any goroutine.
func (s *Session) Call(method, path string, body any) (int, []byte) {
	return s.CallContext(context.Background(), method, path, body)
}

// CallContext is Call whose request is reset when ctx ends.
func (s *Session) CallContext(ctx context.Context, method, path string, body any) (int, []byte) {
	var rd io.Reader
	ct := "application/octet-stream"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, _ := json.Marshal(b)
		rd, ct = bytes.NewReader(j), "application/json"
	}
	req, _ := http.NewRequestWithContext(ctx, method, "https://localhost"+path, rd)
	req.Header.Set("Content-Type", ct)
	resp, err := s.cc.RoundTrip(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// OK is Call that fails the test unless the answer is 200.
func (s *Session) OK(method, path string, body any) []byte {
	s.t.Helper()
	st, out := s.Call(method, path, body)
	if st != http.StatusOK {
		s.t.Fatalf("%s %s: %d %s", method, path, st, out)
	}
	return out
}

// Query names a snapshot.
func Query(store, typ, id string, epoch int64) url.Values {
	return url.Values{"store": {store}, "backup-type": {typ}, "backup-id": {id}, "backup-time": {fmt.Sprint(epoch)}}
}

// Blob encodes a chunk as a DataBlob, raw or zstd (frame by encode).
func Blob(t testing.TB, data []byte, encode func([]byte) []byte) []byte {
	var b []byte
	var err error
	if encode != nil {
		b, err = datablob.EncodeZstd(encode(data))
	} else {
		b, err = datablob.EncodeRaw(data)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Backup writes chunks as one dynamic archive of the session's snapshot
// (type host, id id, time epoch), uploading those not in known (it adds
// them), then the manifest, then finish. It returns how many it uploaded.
// encode, if set, makes every other chunk a zstd blob.
func (s *Session) Backup(archive, id string, epoch int64, chunks [][]byte, known map[string]bool, encode func([]byte) []byte) int {
	s.t.Helper()
	var wid int
	json.Unmarshal(s.OK("POST", "/dynamic_index", map[string]any{"archive-name": archive}), &struct{ Data *int }{&wid})
	var digests []string
	var offsets []uint64
	var off uint64
	uploads := 0
	csum := pbsidx.NewCsum()
	for i, c := range chunks {
		sum := sha256.Sum256(c)
		d := hex.EncodeToString(sum[:])
		if !known[d] {
			enc := encode
			if i%2 == 1 {
				enc = nil
			}
			b := Blob(s.t, c, enc)
			s.OK("POST", fmt.Sprintf("/dynamic_chunk?wid=%d&digest=%s&size=%d&encoded-size=%d", wid, d, len(c), len(b)), b)
			known[d] = true
			uploads++
		}
		digests = append(digests, d)
		offsets = append(offsets, off)
		off += uint64(len(c))
		csum.AddEntry(off, sum)
	}
	s.OK("PUT", "/dynamic_index", map[string]any{"wid": wid, "digest-list": digests, "offset-list": offsets})
	sum := csum.Sum()
	s.OK("POST", "/dynamic_close", map[string]any{"wid": wid, "chunk-count": len(chunks), "size": off, "csum": hex.EncodeToString(sum[:])})
	manifest := fmt.Sprintf(`{"backup-type":"host","backup-id":%q,"backup-time":%d,"files":[{"filename":%q,"crypt-mode":"none","size":%d,"csum":"%x"}],"unprotected":{},"signature":null}`, id, epoch, archive, off, sum)
	mb, _ := datablob.EncodeRaw([]byte(manifest))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	s.OK("POST", "/finish", nil)
	return uploads
}

// Restore downloads a dynamic archive of the session's snapshot and
// returns its content.
func (s *Session) Restore(archive string) []byte {
	s.t.Helper()
	d, err := pbsidx.ParseDynamic(s.OK("GET", "/download?file-name="+archive, nil), 0)
	if err != nil {
		s.t.Fatal(err)
	}
	var out []byte
	for _, e := range d.Entries {
		blob, err := datablob.ParseChunk(s.OK("GET", "/chunk?digest="+hex.EncodeToString(e.Digest[:]), nil))
		if err != nil {
			s.t.Fatal(err)
		}
		plain, err := blob.Decode(datablob.MaxChunkSize)
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, plain...)
	}
	return out
}

// FixedChunk is the chunk size of BackupFixed: PBS's for images.
const FixedChunk = 4 << 20

// BackupFixed writes size bytes of src as one fixed archive of the
// session's snapshot (type typ, id id, time epoch) in FixedChunk chunks,
// sent as raw DataBlobs (what clients send for data zstd does not
// shrink) with inflight uploads at once, then the manifest, then finish:
// how proxmox-backup-client backs up an image.
func (s *Session) BackupFixed(archive, typ, id string, epoch int64, src io.ReaderAt, size int64, inflight int) error {
	var wid int
	st, out := s.Call("POST", "/fixed_index", map[string]any{"archive-name": archive, "size": size})
	if st != http.StatusOK {
		return fmt.Errorf("fixed_index: %d %s", st, out)
	}
	json.Unmarshal(out, &struct{ Data *int }{&wid})
	n := int((size + FixedChunk - 1) / FixedChunk)
	digests := make([]string, n)
	offsets := make([]int64, n)
	work := make(chan int)
	errs := make(chan error, inflight)
	for range inflight {
		go func() {
			buf := make([]byte, FixedChunk)
			var err error
			for k := range work {
				if err != nil {
					continue // drain
				}
				c := buf[:min(FixedChunk, size-int64(k)*FixedChunk)]
				if _, err = src.ReadAt(c, int64(k)*FixedChunk); err != nil {
					continue
				}
				sum := sha256.Sum256(c)
				blob, _ := datablob.EncodeRaw(c)
				if st, out := s.Call("POST", fmt.Sprintf("/fixed_chunk?wid=%d&digest=%x&size=%d&encoded-size=%d", wid, sum, len(c), len(blob)), blob); st != http.StatusOK {
					err = fmt.Errorf("chunk %d: %d %s", k, st, out)
					continue
				}
				digests[k], offsets[k] = hex.EncodeToString(sum[:]), int64(k)*FixedChunk
			}
			errs <- err
		}()
	}
	for k := range n {
		work <- k
	}
	close(work)
	var err error
	for range inflight {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return err
	}
	csum := pbsidx.NewCsum()
	for _, d := range digests {
		raw, _ := hex.DecodeString(d)
		csum.AddDigest(pbsidx.Digest(raw))
	}
	for off := 0; off < n; off += 128 {
		if st, out := s.Call("PUT", "/fixed_index", map[string]any{"wid": wid, "digest-list": digests[off:min(off+128, n)], "offset-list": offsets[off:min(off+128, n)]}); st != http.StatusOK {
			return fmt.Errorf("fixed_index append: %d %s", st, out)
		}
	}
	sum := csum.Sum()
	if st, out := s.Call("POST", "/fixed_close", map[string]any{"wid": wid, "chunk-count": n, "size": size, "csum": hex.EncodeToString(sum[:])}); st != http.StatusOK {
		return fmt.Errorf("fixed_close: %d %s", st, out)
	}
	manifest := fmt.Sprintf(`{"backup-type":%q,"backup-id":%q,"backup-time":%d,"files":[{"filename":%q,"crypt-mode":"none","size":%d,"csum":"%x"}],"unprotected":{},"signature":null}`, typ, id, epoch, archive, size, sum)
	mb, _ := datablob.EncodeRaw([]byte(manifest))
	if st, out := s.Call("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb); st != http.StatusOK {
		return fmt.Errorf("manifest: %d %s", st, out)
	}
	if st, out := s.Call("POST", "/finish", nil); st != http.StatusOK {
		return fmt.Errorf("finish: %d %s", st, out)
	}
	return nil
}

// RestoreFixed downloads a fixed archive of the reader session's snapshot
// into dst with inflight chunk downloads at once, and returns its size.
func (s *Session) RestoreFixed(archive string, dst io.WriterAt, inflight int) (int64, error) {
	st, raw := s.Call("GET", "/download?file-name="+archive, nil)
	if st != http.StatusOK {
		return 0, fmt.Errorf("download %s: %d %s", archive, st, raw)
	}
	f, err := pbsidx.ParseFixed(raw, 0)
	if err != nil {
		return 0, err
	}
	work := make(chan int)
	errs := make(chan error, inflight)
	for range inflight {
		go func() {
			var err error
			for k := range work {
				if err != nil {
					continue // drain
				}
				st, body := s.Call("GET", "/chunk?digest="+hex.EncodeToString(f.Digests[k][:]), nil)
				if st != http.StatusOK {
					err = fmt.Errorf("chunk %d: %d %s", k, st, body)
					continue
				}
				var blob datablob.Blob
				if blob, err = datablob.ParseChunk(body); err != nil {
					continue
				}
				var plain []byte
				if plain, err = blob.Decode(datablob.MaxChunkSize); err != nil {
					continue
				}
				_, err = dst.WriteAt(plain, int64(k)*int64(f.ChunkSize))
			}
			errs <- err
		}()
	}
	for k := range f.Digests {
		work <- k
	}
	close(work)
	for range inflight {
		err = errors.Join(err, <-errs)
	}
	return int64(f.Size), err
}
