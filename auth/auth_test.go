package auth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRolesAllowWhatTheirRankAllows(t *testing.T) {
	cases := []struct {
		role auth.Role
		want []bool // Read, Append, Replace, Admin
	}{
		{auth.RoleRead, []bool{true, false, false, false}},
		{auth.RoleAppend, []bool{true, true, false, false}},
		{auth.RoleWrite, []bool{true, true, true, false}},
		{auth.RoleAdmin, []bool{true, true, true, true}},
	}
	for _, c := range cases {
		p := auth.Principal{Name: "p", Tenant: "t", Role: c.role}
		for i, a := range []auth.Action{auth.Read, auth.Append, auth.Replace, auth.Admin} {
			ctx := auth.NewContext(context.Background(), p)
			err := auth.Check(ctx, a, "index x")
			if (err == nil) != c.want[i] {
				t.Errorf("%s %s: %v", c.role, a, err)
			}
			if err != nil && (!errors.Is(err, apierr.ErrPermission) || !strings.Contains(err.Error(), "p may not")) {
				t.Errorf("refusal %v does not name the principal or is not ErrPermission", err)
			}
		}
	}
	if auth.FromContext(context.Background()) != auth.Anonymous {
		t.Fatal("an unauthenticated context is not anonymous")
	}
}

func TestFileTokensCertsAndReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials.yaml")
	readTok, readHash := auth.NewToken()
	appendTok, appendHash := auth.NewToken()
	write(t, path, `
tenants:
  - name: acme
principals:
  - name: reader
    tenant: acme
    role: read
    token_sha256: `+readHash+`
  - name: host-1
    tenant: acme
    role: append
    cert_subject: CN=host-1,O=acme
`)
	r, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := r.Token(readTok); err != nil || p.Name != "reader" || p.Role != auth.RoleRead || p.Tenant != "acme" {
		t.Fatalf("reader's token: %v, %v", p, err)
	}
	if _, err := r.Token(appendTok); !errors.Is(err, auth.ErrUnknownCredential) {
		t.Fatalf("an unknown token: %v", err)
	}
	if p, err := r.Subject("CN=host-1,O=acme"); err != nil || p.Name != "host-1" || p.Role != auth.RoleAppend {
		t.Fatalf("host-1's certificate: %v, %v", p, err)
	}
	// A change takes effect at the next reload; an invalid file does not.
	write(t, path, "principals:\n  - name: writer\n    role: write\n    token_sha256: "+appendHash+"\n")
	if !r.Reload() {
		t.Fatal("a changed file was not reloaded")
	}
	if p, err := r.Token(appendTok); err != nil || p.Name != "writer" || p.Tenant != auth.DefaultTenant {
		t.Fatalf("after the reload: %v, %v", p, err)
	}
	if _, err := r.Token(readTok); err == nil {
		t.Fatal("a removed principal still authenticates")
	}
	write(t, path, "principals:\n  - name: broken\n    role: superuser\n    token_sha256: "+readHash+"\n")
	if r.Reload() {
		t.Fatal("an invalid file replaced the principals")
	}
	if _, err := r.Token(appendTok); err != nil {
		t.Fatalf("after an invalid change the previous principals are gone: %v", err)
	}
}

func TestFileIsValidated(t *testing.T) {
	_, hash := auth.NewToken()
	for name, body := range map[string]string{
		"unknown role":       "principals: [{name: a, role: root, token_sha256: " + hash + "}]",
		"no credential":      "principals: [{name: a, role: read}]",
		"both credentials":   "principals: [{name: a, role: read, token_sha256: " + hash + ", cert_subject: CN=a}]",
		"short hash":         "principals: [{name: a, role: read, token_sha256: abcd}]",
		"unknown tenant":     "principals: [{name: a, tenant: nope, role: read, token_sha256: " + hash + "}]",
		"duplicate name":     "principals: [{name: a, role: read, token_sha256: " + hash + "}, {name: a, role: read, cert_subject: CN=a}]",
		"unknown field":      "principals: [{name: a, role: read, token: secret}]",
		"bad principal name": "principals: [{name: 'a b', role: read, cert_subject: CN=a}]",
	} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		write(t, path, body)
		if _, err := auth.Load(path, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// ByName finds a file's principal, token or certificate alike, follows a
// reload, and never the principals AddToken added.
func TestByName(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	_, hash := auth.NewToken()
	write(t, path, `
tenants:
  - name: acme
principals:
  - name: web-backup
    tenant: acme
    role: append
    token_sha256: `+hash+`
  - name: pmx-host-1
    role: read
    cert_subject: CN=pmx-host-1
`)
	reg, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg.AddToken("an-admin-token-0123456789", auth.Principal{Name: "token-file", Tenant: auth.DefaultTenant, Role: auth.RoleAdmin})
	for name, want := range map[string]auth.Principal{
		"web-backup": {Name: "web-backup", Tenant: "acme", Role: auth.RoleAppend, Domain: "acme"},
		"pmx-host-1": {Name: "pmx-host-1", Tenant: auth.DefaultTenant, Role: auth.RoleRead, Domain: auth.DefaultDomain},
	} {
		if got, err := reg.ByName(name); err != nil || got != want {
			t.Errorf("ByName(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	for _, name := range []string{"token-file", "nobody", ""} {
		if _, err := reg.ByName(name); !errors.Is(err, auth.ErrUnknownCredential) || !strings.Contains(err.Error(), "no principal") {
			t.Errorf("ByName(%q): %v, want ErrUnknownCredential", name, err)
		}
	}
	write(t, path, "principals:\n  - name: web-backup\n    role: write\n    token_sha256: "+hash+"\n")
	if !reg.Reload() {
		t.Fatal("not reloaded")
	}
	if got, err := reg.ByName("web-backup"); err != nil || got.Role != auth.RoleWrite || got.Tenant != auth.DefaultTenant {
		t.Errorf("after the reload: %v, %v", got, err)
	}
	if _, err := reg.ByName("pmx-host-1"); err == nil {
		t.Error("a removed principal is still found")
	}
}

func TestTenantsDomainsAndQuotas(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	_, hash := auth.NewToken()
	write(t, path, `
tenants:
  - name: acme
    quota:
      logical_bytes: 2GiB
  - name: acme-dev
    dedup_domain: acme
  - name: globex
    dedup_domain: shared
    quota:
      stored_bytes: 500M
principals:
  - name: dev
    tenant: acme-dev
    role: write
    token_sha256: `+hash+`
`)
	reg, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]auth.Tenant{
		"default":  {Name: "default", DedupDomain: "default"},
		"acme":     {Name: "acme", DedupDomain: "acme", LogicalQuota: 2 << 30},
		"acme-dev": {Name: "acme-dev", DedupDomain: "acme"},
		"globex":   {Name: "globex", DedupDomain: "shared", StoredQuota: 500 << 20},
	}
	for name, w := range want {
		if got, ok := reg.Tenant(name); !ok || got != w {
			t.Errorf("Tenant(%q) = %+v, %v; want %+v", name, got, ok, w)
		}
	}
	if p, err := reg.ByName("dev"); err != nil || p.Domain != "acme" || p.DedupDomain() != "acme" {
		t.Errorf("dev = %+v, %v: want the domain of its tenant, acme", p, err)
	}
	for _, bad := range []string{
		"tenants:\n  - name: default\n    dedup_domain: other\n",
		"tenants:\n  - name: a\n    dedup_domain: ../x\n",
		"tenants:\n  - name: a\n    quota:\n      logical_bytes: lots\n",
		"tenants:\n  - name: a\n    quota:\n      stored_bytes: 0\n",
	} {
		p := filepath.Join(t.TempDir(), "bad.yaml")
		write(t, p, bad)
		if _, err := auth.Load(p, nil); err == nil {
			t.Errorf("Load accepted %q", bad)
		}
	}
}

func TestForwardedDomain(t *testing.T) {
	for v, want := range map[string]auth.Principal{
		"web;acme;append;shared": {Name: "web", Tenant: "acme", Role: auth.RoleAppend, Domain: "shared"},
		// from a gateway that predates domains
		"web;default;read": {Name: "web", Tenant: "default", Role: auth.RoleRead, Domain: auth.DefaultDomain},
	} {
		got, ok, err := auth.Forwarded(metadata.Pairs(auth.ForwardKey, v))
		if err != nil || !ok || got != want {
			t.Errorf("Forwarded(%q) = %+v, %v, %v; want %+v", v, got, ok, err, want)
		}
	}
	// Three fields name no domain: only the default tenant's is known.
	for _, v := range []string{"web;acme;append;", "web;acme;append;a/b", "web;acme;append;x;y", "web;acme;append"} {
		if _, _, err := auth.Forwarded(metadata.Pairs(auth.ForwardKey, v)); err == nil {
			t.Errorf("Forwarded(%q) accepted", v)
		}
	}
}

// A session that follows the registry ends when its principal is revoked
// or changed, and only then.
func TestFollowEndsRevokedSessions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	tok, hash := auth.NewToken()
	other, otherHash := auth.NewToken()
	file := func(role string) string {
		return "principals:\n  - name: web\n    role: " + role + "\n    token_sha256: " + hash +
			"\n  - name: other\n    role: read\n    token_sha256: " + otherHash + "\n"
	}
	write(t, path, file("append"))
	reg, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := reg.Token(tok)
	ctx, stop := reg.Follow(context.Background(), p, func() (auth.Principal, error) { return reg.Token(tok) })
	defer stop()
	po, _ := reg.Token(other)
	octx, ostop := reg.Follow(context.Background(), po, func() (auth.Principal, error) { return reg.Token(other) })
	defer ostop()

	// A change that leaves both principals as they were ends nothing.
	write(t, path, file("append")+"tenants:\n  - name: acme\n")
	if !reg.Reload() {
		t.Fatal("the changed file was not reloaded")
	}
	// web's role changes: its session ends with ErrRevoked; other's stays.
	write(t, path, file("read"))
	reg.Reload()
	<-ctx.Done()
	if !errors.Is(context.Cause(ctx), auth.ErrRevoked) {
		t.Fatalf("cause %v, want ErrRevoked", context.Cause(ctx))
	}
	if octx.Err() != nil {
		t.Fatalf("an unchanged principal's session ended: %v", context.Cause(octx))
	}
}

// A Proxmox API token id (user@realm!tokenname) is a principal name, in
// the file and forwarded; a tenant or domain name still may not hold '!'.
func TestProxmoxTokenNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	tok, hash := auth.NewToken()
	write(t, path, "tenants: [{name: acme}]\nprincipals: [{name: 'backup@pbs!host1', tenant: acme, role: append, token_sha256: "+hash+"}]\n")
	reg, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := reg.Token(tok); err != nil || p.Name != "backup@pbs!host1" {
		t.Fatalf("Token: %v, %v", p, err)
	}
	if got, ok, err := auth.Forwarded(metadata.Pairs(auth.ForwardKey, "backup@pbs!host1;acme;append;acme")); err != nil || !ok || got.Name != "backup@pbs!host1" {
		t.Fatalf("Forwarded: %v, %v, %v", got, ok, err)
	}
	write(t, path, "tenants: [{name: 'ac!me'}]\nprincipals: [{name: a, role: read, token_sha256: "+hash+"}]\n")
	if _, err := auth.Load(path, nil); err == nil {
		t.Fatal("a tenant named with '!' was accepted")
	}
}
