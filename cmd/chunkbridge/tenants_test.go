package main

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/internal/testpki"
)

// Tenants through every listener of `serve all`: acme's files are not
// found by globex (another domain) over gRPC, REST, the casync HTTP store
// and casync over TCP; the same name is a different file per tenant; a
// tenant over its quota is refused with each protocol's own error (gRPC
// RESOURCE_EXHAUSTED, HTTP 507, casync ABORT with EDQUOT's text), nothing
// is published and its earlier file is unchanged.
func TestTenantsAcrossListeners(t *testing.T) {
	creds, hop, tok := writeTenantCredentials(t, t.TempDir(), "tenants:\n  - name: acme\n  - name: globex\n  - name: tiny\n    quota:\n      logical_bytes: 1M\nprincipals:\n",
		[]tenantPrincipal{{"acme-w", "acme", "write"}, {"globex-w", "globex", "write"}, {"tiny-w", "tiny", "write"}, {"ops", "", "admin"}}, "hop-token-of-the-tenants-test")
	store := t.TempDir()
	p := start(t, nil, "serve", "all", "--store", store, "--credentials-file", creds, "--auth-token-file", hop)
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)

	var table []string
	record := func(listener, who, call, result string) {
		table = append(table, fmt.Sprintf("| %s | %s | %s | %s |", listener, who, call, result))
	}
	data := bytes.Repeat([]byte("tenant test chunk "), 100)
	id := sha256.Sum256(data)
	upload := func(token string) error { return uploadAs(t, p, token, data) }
	putIndex := func(token, name string, index []byte) error { return putIndexAs(t, p, token, name, index) }
	stat := func(token, name string) (*chunkbridgev1.IndexInfo, error) {
		r, err := chunkbridgev1.NewCatalogServiceClient(dialAs(t, p.grpc, token)).StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: name})
		return r.GetIndex(), err
	}
	index := smallIndex(t, data)

	// gRPC: acme's index is absent for globex, which then stores its own
	// file of the same name, in its own domain.
	for _, who := range []string{"acme-w", "tiny-w"} {
		if err := upload(tok[who]); err != nil {
			t.Fatalf("upload as %s: %v", who, err)
		}
	}
	if err := putIndex(tok["acme-w"], "os.caibx", index); err != nil {
		t.Fatal(err)
	}
	record("gRPC", "acme (write)", "PutIndex os.caibx", "served")
	if _, err := stat(tok["globex-w"], "os.caibx"); status.Code(err) != codes.NotFound || strings.Contains(err.Error(), "acme") {
		t.Fatalf("globex stats acme's index: %v; want NOT_FOUND naming no other tenant", err)
	}
	record("gRPC", "globex (other tenant)", "StatIndex os.caibx", "refused: NOT_FOUND")
	if err := putIndex(tok["globex-w"], "os.caibx", index); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("globex's index of chunks only acme's domain has: %v; want missing chunks", err)
	}
	record("gRPC", "globex (other domain)", "PutIndex of acme's chunks", "refused: FAILED_PRECONDITION (missing chunks)")
	if err := upload(tok["globex-w"]); err != nil {
		t.Fatal(err)
	}
	if err := putIndex(tok["globex-w"], "os.caibx", index); err != nil {
		t.Fatalf("globex's own os.caibx: %v", err)
	}
	record("gRPC", "globex", "PutIndex os.caibx (own)", "served")
	for _, f := range []string{"indexes/os.caibx", "tenants/acme/indexes/os.caibx", "tenants/globex/indexes/os.caibx", "admin/tenants/acme", "domains/acme/chunks", "domains/globex/chunks"} {
		if _, err := os.Stat(filepath.Join(store, f)); (err == nil) != (f != "indexes/os.caibx") {
			t.Errorf("store layout: %s: %v", f, err)
		}
	}

	// Quota: tiny may describe 1 MiB; an index of 2 MiB is refused.
	big := bigIndex(t, data, 2<<20/len(data)+1)
	err := putIndex(tok["tiny-w"], "big.caibx", big)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "quota exceeded") || !strings.Contains(err.Error(), "quota of 1048576") {
		t.Fatalf("tiny over its quota: %v; want RESOURCE_EXHAUSTED with usage and limit", err)
	}
	record("gRPC", "tiny (quota 1 MiB)", "PutIndex of 2 MiB", "refused: RESOURCE_EXHAUSTED")
	if err := putIndex(tok["tiny-w"], "small.caibx", index); err != nil {
		t.Fatalf("tiny within its quota: %v", err)
	}

	// REST and the casync HTTP store.
	do := func(method, path, token string, body []byte) (int, string) {
		req, _ := http.NewRequest(method, "http://"+p.http+path, bytes.NewReader(body))
		req.SetBasicAuth("", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(msg)
	}
	chunkPath := fmt.Sprintf("/casync/chunks/%x/%x.cacnk", id[:2], id)
	for _, c := range []struct {
		listener, who, method, path string
		body                        []byte
		want                        int
		say                         string
	}{
		{"REST", "acme-w", "GET", "/v1/indexes/os.caibx", nil, 200, ""},
		{"REST", "tiny-w", "GET", "/v1/indexes/os.caibx", nil, 404, ""},
		{"REST", "tiny-w", "GET", "/v1/indexes", nil, 200, "small.caibx"},
		{"casync HTTP", "tiny-w", "GET", "/casync/indexes/os.caibx", nil, 404, ""},
		{"casync HTTP", "globex-w", "GET", "/casync/indexes/os.caibx", nil, 200, ""},
		{"casync HTTP", "tiny-w", "PUT", "/casync/indexes/big.caibx", big, 507, "quota exceeded"},
		{"casync HTTP", "tiny-w", "PUT", "/casync/indexes/small.caibx", index, 201, ""},
		{"casync HTTP", "globex-w", "GET", chunkPath, nil, 200, ""},
	} {
		code, msg := do(c.method, c.path, tok[c.who], c.body)
		if code != c.want || !strings.Contains(msg, c.say) || (code == 404 && strings.Contains(msg, "acme")) {
			t.Errorf("%s %s %s as %s = %d %q; want %d with %q", c.listener, c.method, c.path, c.who, code, msg, c.want, c.say)
		}
		record(c.listener, c.who, c.method+" "+c.path, fmt.Sprint(code))
	}
	if code, msg := do("GET", "/v1/indexes", tok["tiny-w"], nil); code != 200 || strings.Contains(msg, "os.caibx") {
		t.Errorf("tiny lists %d %s: another tenant's name shows", code, msg)
	}
	// Usage per tenant, through REST, for an admin.
	if code, msg := do("GET", "/v1/stats", tok["ops"], nil); code != 200 || !strings.Contains(msg, `"tenant":"tiny"`) || !strings.Contains(msg, `"logicalBytesQuota":"1048576"`) {
		t.Errorf("stats per tenant = %d %s", code, msg)
	}

	// casync over TCP, the real client.
	{
		needCasync(t)
		small := blob(t, 21, 200_000)
		tinyEnv := tcpCasync(t, p)
		tinyEnv.env = append(tinyEnv.env, "CHUNKBRIDGE_TOKEN="+tok["tiny-w"])
		acmeEnv := tcpCasync(t, p)
		acmeEnv.env = append(acmeEnv.env, "CHUNKBRIDGE_TOKEN="+tok["acme-w"])
		acmeEnv.run("make", "srv:/tcp.caibx", small)
		record("casync TCP", "acme", "push tcp.caibx", "served")
		out := tinyEnv.runFail("extract", "srv:/tcp.caibx", filepath.Join(t.TempDir(), "out"))
		if strings.Contains(out, "acme") {
			t.Errorf("tiny's pull of acme's index names acme:\n%s", out)
		}
		record("casync TCP", "tiny (other tenant)", "pull tcp.caibx", "refused: "+lastLine(out))
		bigFile := blob(t, 22, 3<<20)
		out = tinyEnv.runFail("make", "srv:/big.caibx", bigFile)
		if !strings.Contains(out, "quota exceeded") {
			t.Errorf("tiny's push over its quota: want the quota's reason:\n%s", out)
		}
		record("casync TCP", "tiny (quota 1 MiB)", "push 3 MiB", "refused: "+lastLine(out))
		if code, _ := do("GET", "/casync/indexes/big.caibx", tok["tiny-w"], nil); code != 404 {
			t.Errorf("the refused push published big.caibx: %d", code)
		}
	}
	t.Logf("listener × case, as run:\n| listener | principal | call | result |\n|---|---|---|---|\n%s", strings.Join(table, "\n"))
}

// bigIndex is a casync index that describes the chunk of data n times.
func bigIndex(t *testing.T, data []byte, n int) []byte {
	t.Helper()
	h, _ := caindex.BlobHeader(caindex.SHA256, 1, 4096, 1<<20)
	var b bytes.Buffer
	w, err := caindex.NewWriter(&b, h)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		w.Add(sha256.Sum256(data), uint64(len(data)))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// PMXBCKUP with tenants: the client certificate's principal sets the
// tenant. Another tenant's snapshot is not found (restore, hashes), and a
// backup over the logical quota is refused with the quota's reason while
// the tenant's earlier snapshot stays restorable.
func TestPMXTenants(t *testing.T) {
	srvCert, srvKey := selfSigned(t)
	ca := testpki.NewCA(t, "tenants test client CA")
	caFile := testpki.WriteFile(t, t.TempDir(), "ca.pem", ca.PEM)
	cert := func(cn string) []string {
		c, k := ca.IssueFiles(t, pkix.Name{CommonName: cn}, x509.ExtKeyUsageClientAuth)
		return []string{"--cert", c, "--key", k}
	}
	creds := filepath.Join(t.TempDir(), "credentials.yaml")
	os.WriteFile(creds, []byte(`tenants:
  - name: acme
  - name: globex
  - name: tiny
    quota:
      logical_bytes: 1M
principals:
  - name: acme-host
    tenant: acme
    role: append
    cert_subject: CN=acme-host
  - name: globex-host
    tenant: globex
    role: write
    cert_subject: CN=globex-host
  - name: tiny-host
    tenant: tiny
    role: append
    cert_subject: CN=tiny-host
`), 0o600)
	p := start(t, nil, "serve", "all", "--store", t.TempDir(), "--credentials-file", creds, "--tls-cert", srvCert, "--tls-key", srvKey, "--pmx-tls-client-ca", caFile)
	waitHealth(t, tlsConn(t, p, srvCert, ""), healthpb.HealthCheckResponse_SERVING)
	conn := []string{"--server", p.pmx, "--tls-ca", srvCert}
	run := func(who string, args ...string) (string, error) {
		return pmxEnvRun(nil, append(append(args, conn...), cert(who)...)...)
	}
	backup := func(who, id string, data []byte) (string, string, error) {
		out, err := run(who, "backup", "--type", "host", "--id", id, "--name", "data.bin", writeFile(t, data))
		m := snapshotRE.FindStringSubmatch(out)
		if m == nil {
			return "", out, err
		}
		return m[1], out, err
	}
	restore := func(who, snap string) ([]byte, string, error) {
		dst := filepath.Join(t.TempDir(), "restored")
		out, err := run(who, "restore", snap, dst)
		b, _ := os.ReadFile(dst)
		return b, out, err
	}
	var table []string
	record := func(who, call, result string) {
		table = append(table, fmt.Sprintf("| pmx | %s | %s | %s |", who, call, result))
	}

	data := randomBytes(91, 2<<20+5)
	snap, out, err := backup("acme-host", "web", data)
	if err != nil || snap == "" {
		t.Fatalf("acme's backup: %v\n%s", err, out)
	}
	record("acme (append)", "backup", "served")
	for _, call := range [][]string{{"restore"}, {"hashes", snap}} {
		var out string
		var err error
		var got []byte
		if call[0] == "restore" {
			got, out, err = restore("globex-host", snap)
		} else {
			out, err = run("globex-host", call...)
		}
		if err == nil || len(got) != 0 || strings.Contains(out, "acme") {
			t.Errorf("globex %s of acme's snapshot: %v, %d bytes; want refused, naming no other tenant:\n%s", call[0], err, len(got), out)
		}
		record("globex (other tenant)", call[0]+" of acme's snapshot", "refused: "+lastLine(out))
	}

	small := randomBytes(92, 300_000)
	first, out, err := backup("tiny-host", "db", small)
	if err != nil || first == "" {
		t.Fatalf("tiny's backup within its quota: %v\n%s", err, out)
	}
	_, out, err = backup("tiny-host", "db-big", data)
	if err == nil || !strings.Contains(out, "quota exceeded") || !strings.Contains(out, "quota of 1048576") {
		t.Fatalf("tiny's backup over its quota: %v; want refused with usage and limit:\n%s", err, out)
	}
	record("tiny (quota 1 MiB)", "backup of 2 MiB", "refused: "+lastLine(out))
	if got, out, err := restore("tiny-host", first); err != nil || !bytes.Equal(got, small) {
		t.Fatalf("tiny's earlier snapshot after the refusal: %v\n%s", err, out)
	}
	record("tiny", "restore of its earlier snapshot", "served, byte-identical")
	t.Logf("listener × case, as run:\n| listener | principal | call | result |\n|---|---|---|---|\n%s", strings.Join(table, "\n"))
}
