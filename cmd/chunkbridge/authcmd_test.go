package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/auth"
)

// `auth add-token` prints a new token once and an entry holding its
// hash, which a credentials file accepts and which authenticates the
// token as the principal asked for.
func TestAuthAddToken(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	addToken := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append([]string{"auth", "add-token"}, args...)...).Output()
		if err != nil {
			t.Fatalf("auth add-token %v: %v", args, err)
		}
		return string(out)
	}
	// loads writes a credentials file of head and entry, loads it and
	// returns the principal the token authenticates as.
	load := func(head, entry, token string) auth.Principal {
		t.Helper()
		path := filepath.Join(t.TempDir(), "credentials.yaml")
		if err := os.WriteFile(path, []byte(head+entry), 0o600); err != nil {
			t.Fatal(err)
		}
		reg, err := auth.Load(path, nil)
		if err != nil {
			t.Fatalf("the printed entry does not load: %v\n%s", err, head+entry)
		}
		p, err := reg.Token(token)
		if err != nil {
			t.Fatalf("the printed token does not authenticate with the printed entry: %v", err)
		}
		return p
	}

	// Text: the token alone on its line, then the entry.
	out := addToken("--role", "append", "web-backup")
	var token string
	var entry strings.Builder
	for _, l := range strings.SplitAfter(out, "\n") {
		switch {
		case strings.HasPrefix(l, "cbt_"):
			token = strings.TrimSpace(l)
		case strings.HasPrefix(l, "  "):
			entry.WriteString(l)
		}
	}
	sum := sha256.Sum256([]byte(token))
	if token == "" || !strings.Contains(entry.String(), "token_sha256: "+hex.EncodeToString(sum[:])) {
		t.Fatalf("no token, or an entry without its hash:\n%s", out)
	}
	if strings.Count(out, token) != 1 || strings.Contains(entry.String(), token) {
		t.Errorf("the token must be printed once, and never in the entry:\n%s", out)
	}
	if p := load("principals:\n", entry.String(), token); p != (auth.Principal{Name: "web-backup", Tenant: "default", Role: auth.RoleAppend, Domain: "default"}) {
		t.Errorf("the token authenticates as %v", p)
	}

	// JSON, another tenant; a second token is another token.
	var j struct {
		Name, Tenant, Role, Token, Entry string
		TokenSHA256                      string `json:"token_sha256"`
	}
	if err := json.Unmarshal([]byte(addToken("--tenant", "acme", "--role", "read", "--json", "auditor")), &j); err != nil {
		t.Fatal(err)
	}
	sum = sha256.Sum256([]byte(j.Token))
	if j.Name != "auditor" || j.Tenant != "acme" || j.Role != "read" || j.Token == token || j.TokenSHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("--json printed %+v", j)
	}
	if p := load("tenants:\n  - name: acme\nprincipals:\n", j.Entry, j.Token); p != (auth.Principal{Name: "auditor", Tenant: "acme", Role: auth.RoleRead, Domain: "acme"}) {
		t.Errorf("the --json token authenticates as %v", p)
	}

	// Mistakes exit 2, print no token and say what is wrong.
	for _, tc := range []struct {
		args []string
		say  string
	}{
		{[]string{"auth"}, "want add-token"},
		{[]string{"auth", "remove"}, "unknown subcommand"},
		{[]string{"auth", "add-token", "--role", "read"}, "want one NAME"},
		{[]string{"auth", "add-token", "--role", "read", "a", "b"}, "want one NAME"},
		{[]string{"auth", "add-token", "web-backup"}, "--role is required"},
		{[]string{"auth", "add-token", "--role", "owner", "web-backup"}, `role "owner": want read, append, write or admin`},
		{[]string{"auth", "add-token", "--role", "read", "web backup"}, `name "web backup"`},
		{[]string{"auth", "add-token", "--role", "read", "--tenant", "a/b", "x"}, `tenant "a/b"`},
		{[]string{"auth", "add-token", "--rol", "read", "x"}, "flag provided but not defined"},
	} {
		out, err := exec.Command(binary, tc.args...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(string(out), tc.say) || strings.Contains(string(out), "cbt_") {
			t.Errorf("chunkbridge %s: %v, want exit 2 saying %q and no token:\n%s", strings.Join(tc.args, " "), err, tc.say, out)
		}
	}
}
