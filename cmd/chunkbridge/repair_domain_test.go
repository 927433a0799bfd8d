package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/auth"
)

// tenantServer starts `serve all` with acme's writer and an admin of the
// tenant acme ("ops"); hop is the token file's admin (tenant default).
func tenantServer(t *testing.T) (p *process, store string, tok map[string]string, hop string) {
	t.Helper()
	creds, hop, tok := writeTenantCredentials(t, t.TempDir(), "tenants:\n  - name: acme\n    quota:\n      stored_bytes: 1GiB\nprincipals:\n",
		[]tenantPrincipal{{"acme-w", "acme", "write"}, {"ops", "acme", "admin"}}, "hop-token-of-the-review-test")
	tok["hop"] = "hop-token-of-the-review-test"
	store = t.TempDir()
	p = start(t, nil, "serve", "all", "--store", store, "--credentials-file", creds, "--auth-token-file", hop)
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	return p, store, tok, hop
}

// verify --repair-from uploads a damaged chunk into the domain that lacks
// it, whatever the tenant of the admin running it: the default domain's
// chunk goes back to the default domain, not into the admin's own.
func TestRepairIntoDefaultDomainAsTenantAdmin(t *testing.T) {
	p, store, tok, _ := tenantServer(t)
	data := bytes.Repeat([]byte("repair review chunk "), 100)
	id := sha256.Sum256(data)
	if err := uploadAs(t, p, tok["hop"], data); err != nil { // the default tenant's
		t.Fatalf("upload: %v", err)
	}
	if err := putIndexAs(t, p, tok["hop"], "default.caibx", smallIndex(t, data)); err != nil {
		t.Fatalf("PutIndex default.caibx: %v", err)
	}
	key := fmt.Sprintf("chunks/%x/%x.cacnk", id[:2], id)
	if err := os.Remove(filepath.Join(store, key)); err != nil {
		t.Fatal(err)
	}
	local := t.TempDir()
	enc, _ := zstd.NewWriter(nil)
	os.MkdirAll(filepath.Join(local, fmt.Sprintf("%x", id[:2])), 0o755)
	os.WriteFile(filepath.Join(local, fmt.Sprintf("%x/%x.cacnk", id[:2], id)), enc.EncodeAll(data, nil), 0o644)
	opsToken := filepath.Join(t.TempDir(), "ops")
	os.WriteFile(opsToken, []byte(tok["ops"]+"\n"), 0o600)
	out, code := runCLI(t, "verify", "--chunk-service", p.grpc, "--token-file", opsToken, "--repair-from", local)
	if _, err := os.Stat(filepath.Join(store, key)); err != nil {
		t.Fatalf("after verify --repair-from (exit %d) by an admin of the tenant acme, the default domain still lacks the chunk (%v); in the store: %s\n%s",
			code, err, strings.Join(chunkFiles(t, store), ", "), out)
	}
}

func chunkFiles(t *testing.T, root string) []string {
	var out []string
	filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(path, ".cacnk") {
			rel, _ := filepath.Rel(root, path)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// tenantPrincipal is one token principal of writeTenantCredentials.
type tenantPrincipal struct{ name, tenant, role string }

// writeTenantCredentials writes dir/credentials.yaml with head (its
// tenants: section and the principals: line) and one token principal per
// ps, and dir/hop holding hopToken; it returns both paths and each
// principal's token by name.
func writeTenantCredentials(t *testing.T, dir, head string, ps []tenantPrincipal, hopToken string) (creds, hop string, tok map[string]string) {
	t.Helper()
	tok = map[string]string{}
	var b strings.Builder
	b.WriteString(head)
	for _, p := range ps {
		token, hash := auth.NewToken()
		tok[p.name] = token
		fmt.Fprintf(&b, "  - name: %s\n    tenant: %s\n    role: %s\n    token_sha256: %s\n", p.name, p.tenant, p.role, hash)
	}
	creds = filepath.Join(dir, "credentials.yaml")
	hop = filepath.Join(dir, "hop")
	if err := os.WriteFile(creds, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hop, []byte(hopToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return creds, hop, tok
}
