package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The casync HTTP store of a separate REST gateway reads chunks on the
// chunk service's ReadChunks streams, opened with the gateway's own token:
// each GET is still made for its caller, whose tenant's domain decides
// (acme's chunk is acme's, not globex's), and many GETs at once each get
// their own chunk.
func TestSeparateCasyncHTTPReadsActForTheCaller(t *testing.T) {
	creds, hop, tok := writeTenantCredentials(t, t.TempDir(), "tenants:\n  - name: acme\n  - name: globex\nprincipals:\n",
		[]tenantPrincipal{{"acme-w", "acme", "write"}, {"acme-r", "acme", "read"}, {"globex-w", "globex", "write"}}, "hop-token-of-the-separate-reads-test")
	chunkSvc := start(t, nil, "serve", "chunk", "--store", t.TempDir(), "--credentials-file", creds, "--auth-token-file", hop)
	waitHealth(t, chunkSvc.conn(t), healthpb.HealthCheckResponse_SERVING)
	gw := start(t, nil, "serve", "rest-gateway", "--chunk-service", chunkSvc.grpc, "--credentials-file", creds, "--auth-token-file", hop)

	do := func(method, path, token string, body []byte) (int, []byte) {
		req, _ := http.NewRequest(method, "http://"+gw.http+path, bytes.NewReader(body))
		if token != "" {
			req.SetBasicAuth("", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, msg
	}
	enc, _ := zstd.NewWriter(nil)
	type stored struct {
		path string
		body []byte
	}
	var chunks []stored
	for i := range 12 {
		data := bytes.Repeat([]byte(fmt.Sprintf("separate reads chunk %d ", i)), 2000+i*100)
		id := sha256.Sum256(data)
		c := stored{fmt.Sprintf("/casync/chunks/%x/%x.cacnk", id[:2], id), enc.EncodeAll(data, nil)}
		if code, msg := do("PUT", c.path, tok["acme-w"], c.body); code != http.StatusCreated {
			t.Fatalf("PUT as acme: %d %s", code, msg)
		}
		chunks = append(chunks, c)
	}
	c := chunks[0]
	for _, tc := range []struct {
		who  string
		want int
	}{{"acme-r", 200}, {"globex-w", 404}, {"", 401}} {
		code, body := do("GET", c.path, tok[tc.who], nil)
		if code != tc.want || (code == 200 && !bytes.Equal(body, c.body)) || (code == 404 && bytes.Contains(body, []byte("acme"))) {
			t.Errorf("GET as %q: %d, %d bytes %.100q; want %d (and the chunk as stored)", tc.who, code, len(body), body, tc.want)
		}
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 24 {
				c := chunks[(g+i)%len(chunks)]
				if code, body := do("GET", c.path, tok["acme-r"], nil); code != 200 || !bytes.Equal(body, c.body) {
					t.Errorf("GET %s: %d, %d bytes, want the %d stored", c.path, code, len(body), len(c.body))
					return
				}
			}
		})
	}
	wg.Wait()
}
