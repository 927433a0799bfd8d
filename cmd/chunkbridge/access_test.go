package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
)

// principals writes a credentials file with one principal per role of
// the default tenant, and "other", a write principal of the tenant
// globex, and returns the file and each one's token.
func principals(t *testing.T, dir string) (string, map[string]string) {
	t.Helper()
	tokens := map[string]string{}
	var b strings.Builder
	b.WriteString("tenants:\n  - name: globex\nprincipals:\n")
	for _, role := range []string{"read", "append", "write", "admin"} {
		tok, hash := auth.NewToken()
		tokens[role] = tok
		fmt.Fprintf(&b, "  - name: %s-user\n    role: %s\n    token_sha256: %s\n", role, role, hash)
	}
	// "other": a write principal of another tenant, in its own dedup domain.
	tok, hash := auth.NewToken()
	tokens["other"] = tok
	fmt.Fprintf(&b, "  - name: other-user\n    tenant: globex\n    role: write\n    token_sha256: %s\n", hash)
	path := filepath.Join(dir, "credentials.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, tokens
}

// uploadAs uploads data as one SHA-256 chunk over gRPC with token; a
// refused chunk is the status of its acknowledgement's code.
func uploadAs(t *testing.T, p *process, token string, data []byte) error {
	stream, err := chunkbridgev1.NewChunkServiceClient(dialAs(t, p.grpc, token)).UploadChunks(t.Context())
	if err != nil {
		return err
	}
	stream.Send(&chunkbridgev1.UploadChunksRequest{Id: fmt.Sprintf("%x", sha256.Sum256(data)), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data})
	stream.CloseSend()
	resp, err := stream.Recv()
	if err == nil && resp.GetCode() != 0 {
		return status.Error(codes.Code(resp.GetCode()), resp.GetMessage())
	}
	return err
}

// putIndexAs publishes index under name over gRPC with token.
func putIndexAs(t *testing.T, p *process, token, name string, index []byte) error {
	stream, err := chunkbridgev1.NewCatalogServiceClient(dialAs(t, p.grpc, token)).PutIndex(t.Context())
	if err != nil {
		return err
	}
	stream.Send(&chunkbridgev1.PutIndexRequest{Name: name, Data: index})
	_, err = stream.CloseAndRecv()
	return err
}

type tokenCreds string

func (c tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	if c == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + string(c)}, nil
}
func (tokenCreds) RequireTransportSecurity() bool { return false }

func dialAs(t *testing.T, addr, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(tokenCreds(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// smallIndex is a valid casync index over one stored chunk.
func smallIndex(t *testing.T, data []byte) []byte { return bigIndex(t, data, 1) }

// Every role against gRPC and REST, with no credential, a wrong one and
// the right one: refused calls store nothing; an append principal cannot
// replace or delete; the file's changes apply without a restart.
func TestAccessControlGRPCAndREST(t *testing.T) {
	dir := t.TempDir()
	creds, tok := principals(t, dir)
	store := t.TempDir()
	p := start(t, nil, "serve", "all", "--store", store, "--credentials-file", creds, "--health-interval", "50ms")

	data := []byte("access control test chunk")
	id := sha256.Sum256(data)
	upload := func(token string) error { return uploadAs(t, p, token, data) }
	putIndex := func(token, name string) error { return putIndexAs(t, p, token, name, smallIndex(t, data)) }
	listIndexes := func(token string) error {
		_, err := chunkbridgev1.NewCatalogServiceClient(dialAs(t, p.grpc, token)).ListIndexes(t.Context(), &chunkbridgev1.ListIndexesRequest{})
		return err
	}
	statIndex := func(token, name string) error {
		_, err := chunkbridgev1.NewCatalogServiceClient(dialAs(t, p.grpc, token)).StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: name})
		return err
	}
	deleteIndex := func(token, name string) error {
		_, err := chunkbridgev1.NewCatalogServiceClient(dialAs(t, p.grpc, token)).DeleteIndex(t.Context(), &chunkbridgev1.DeleteIndexRequest{Name: name})
		return err
	}
	gc := func(token string) error {
		_, err := chunkbridgev1.NewAdminServiceClient(dialAs(t, p.grpc, token)).RunGC(t.Context(), &chunkbridgev1.RunGCRequest{DryRun: true})
		return err
	}
	wrong, _ := auth.NewToken()
	for _, tc := range []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"upload, no credential", func() error { return upload("") }, codes.Unauthenticated},
		{"upload, wrong token", func() error { return upload(wrong) }, codes.Unauthenticated},
		{"upload, read", func() error { return upload(tok["read"]) }, codes.PermissionDenied},
		{"list, no credential", func() error { return listIndexes("") }, codes.Unauthenticated},
		{"list, read", func() error { return listIndexes(tok["read"]) }, codes.OK},
		{"upload, append", func() error { return upload(tok["append"]) }, codes.OK},
		{"put index, read", func() error { return putIndex(tok["read"], "a.caibx") }, codes.PermissionDenied},
		{"put index, append", func() error { return putIndex(tok["append"], "a.caibx") }, codes.OK},
		{"replace index, append", func() error { return putIndex(tok["append"], "a.caibx") }, codes.AlreadyExists},
		{"stat index, other tenant", func() error { return statIndex(tok["other"], "a.caibx") }, codes.NotFound},
		{"delete index, other tenant", func() error { return deleteIndex(tok["other"], "a.caibx") }, codes.NotFound},
		{"stat index, read", func() error { return statIndex(tok["read"], "a.caibx") }, codes.OK},
		{"delete index, append", func() error { return deleteIndex(tok["append"], "a.caibx") }, codes.PermissionDenied},
		{"replace index, write", func() error { return putIndex(tok["write"], "a.caibx") }, codes.OK},
		{"gc, write", func() error { return gc(tok["write"]) }, codes.PermissionDenied},
		{"gc, admin", func() error { return gc(tok["admin"]) }, codes.OK},
		{"delete index, write", func() error { return deleteIndex(tok["write"], "a.caibx") }, codes.OK},
	} {
		if got := status.Code(tc.call()); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// The refused calls stored nothing: no index but the one deleted.
	if entries, _ := os.ReadDir(filepath.Join(store, "indexes")); len(entries) != 0 {
		t.Errorf("indexes left: %v", entries)
	}
	if !strings.Contains(p.logs(), `"access refused"`) || strings.Contains(p.logs(), tok["read"]) {
		t.Error("refusals are not audited, or a token was logged")
	}

	// REST: Bearer or Basic with the token as password; the user name, if
	// any, must be the principal's.
	do := func(method, path, authz string) int {
		req, _ := http.NewRequest(method, "http://"+p.http+path, strings.NewReader(""))
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	basic := func(user, token string) string {
		r, _ := http.NewRequest("GET", "http://x", nil)
		r.SetBasicAuth(user, token)
		return r.Header.Get("Authorization")
	}
	// A read principal cannot make itself an admin through headers the
	// REST gateway turns into gRPC metadata.
	for _, h := range [][2]string{{"Grpc-Metadata-Chunkbridge-Principal", "admin-user;default;admin"}, {"Grpc-Metadata-Authorization", "Bearer " + tok["admin"]}} {
		req, _ := http.NewRequest("GET", "http://"+p.http+"/v1/stats", nil)
		req.Header.Set("Authorization", "Bearer "+tok["read"])
		req.Header.Set(h[0], h[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("read principal with %s: %d, want 403", h[0], resp.StatusCode)
		}
	}
	chunkPath := fmt.Sprintf("/casync/chunks/%x/%x.cacnk", id[:2], id)
	for _, tc := range []struct {
		method, path, authz string
		want                int
	}{
		{"GET", "/v1/indexes", "", 401},
		{"GET", "/v1/indexes", "Bearer " + wrong, 401},
		{"GET", "/v1/indexes", "Bearer " + tok["read"], 200},
		{"GET", "/v1/indexes/none.caibx", "Bearer " + tok["other"], 404},
		{"GET", chunkPath, basic("read-user", tok["read"]), 200},
		{"GET", chunkPath, basic("", tok["read"]), 200},
		{"GET", chunkPath, basic("admin-user", tok["read"]), 401},
		{"DELETE", "/v1/indexes/none.caibx", "Bearer " + tok["append"], 403},
		{"GET", "/v1/stats", "Bearer " + tok["write"], 403},
		{"GET", "/v1/stats", "Bearer " + tok["admin"], 200},
		{"GET", "/healthz", "", 200},
		{"GET", "/metrics", "", 200},
	} {
		if got := do(tc.method, tc.path, tc.authz); got != tc.want {
			t.Errorf("%s %s (%.20q) = %d, want %d", tc.method, tc.path, tc.authz, got, tc.want)
		}
	}

	// A change of the file applies without a restart: the read principal
	// loses its token.
	os.WriteFile(creds, []byte("principals:\n  - name: admin-user\n    role: admin\n    token_sha256: "+fmt.Sprintf("%x", sha256.Sum256([]byte(tok["admin"])))+"\n"), 0o600)
	if !p.waitLog("credentials file reloaded") {
		t.Fatal("the changed credentials file was not reloaded")
	}
	if got := status.Code(listIndexes(tok["read"])); got != codes.Unauthenticated {
		t.Fatalf("a removed principal after the reload: %v", got)
	}
	if err := listIndexes(tok["admin"]); err != nil {
		t.Fatalf("the remaining principal after the reload: %v", err)
	}
}

// Stock casync reads the HTTP store with the token as a URL password.
func TestCasyncHTTPWithBasicAuth(t *testing.T) {
	needCasync(t)
	creds, tok := principals(t, t.TempDir())
	p := start(t, nil, "serve", "all", "--store", t.TempDir(), "--credentials-file", creds)
	env := tcpCasync(t, p)
	env.env = append(env.env, "CHUNKBRIDGE_TOKEN="+tok["append"])
	src := blob(t, 3, 1<<20)
	env.run("make", "srv:/auth/x.caibx", src)
	out := filepath.Join(t.TempDir(), "out")
	run := func(base string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		return exec.CommandContext(ctx, "casync", "extract", "--store="+base+"/casync/chunks/", base+"/casync/indexes/auth/x.caibx", out).CombinedOutput()
	}
	if b, err := run("http://read-user:" + tok["read"] + "@" + p.http); err != nil {
		t.Fatalf("casync with Basic auth: %v\n%s", err, b)
	}
	sameFile(t, src, out)
	os.Remove(out)
	if _, err := run("http://" + p.http); err == nil {
		t.Fatal("casync without a credential read the store")
	}
}
