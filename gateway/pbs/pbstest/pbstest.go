// Package pbstest is a PBS protocol client for tests: the upgrade by hand
// (no Host header, as the Go client sends it), then HTTP/2 with
// golang.org/x/net/http2 on the same connection, and a whole backup.
package pbstest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
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
	req, _ := http.NewRequest(method, "https://localhost"+path, rd)
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
