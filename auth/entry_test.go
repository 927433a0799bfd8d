package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// The entry NewTokenEntry prints is what Load accepts, and it names the
// token it returned.
func TestNewTokenEntry(t *testing.T) {
	for _, tc := range []struct{ name, tenant, role, file string }{
		{"web-backup", "", "append", "principals:\n"},
		{"auditor@acme", "acme", "read", "tenants:\n  - name: acme\nprincipals:\n"},
		{"123", "default", "admin", "principals:\n"}, // a name YAML would read as a number
	} {
		token, hash, entry, err := NewTokenEntry(tc.name, tc.tenant, tc.role)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if sum := sha256.Sum256([]byte(token)); hex.EncodeToString(sum[:]) != hash || !strings.Contains(entry, hash) {
			t.Errorf("%s: hash %s, entry %q: not the SHA-256 of %s", tc.name, hash, entry, token)
		}
		if strings.Contains(entry, token) {
			t.Errorf("%s: the entry holds the token itself: %q", tc.name, entry)
		}
		tab, err := parse([]byte(tc.file + entry))
		if err != nil {
			t.Fatalf("%s: the entry does not parse: %v\n%s", tc.name, err, tc.file+entry)
		}
		r := &Registry{}
		r.cur.Store(tab)
		p, err := r.Token(token)
		want := tc.tenant
		if want == "" {
			want = DefaultTenant
		}
		if err != nil || p.Name != tc.name || p.Tenant != want || p.Role.String() != tc.role {
			t.Errorf("%s: the token authenticates as %v (%v)", tc.name, p, err)
		}
	}
	for _, bad := range [][3]string{{"", "", "read"}, {"a b", "", "read"}, {"x", "t/1", "read"}, {"x", "", "owner"}, {"x", "", ""}} {
		if _, _, _, err := NewTokenEntry(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("NewTokenEntry%q: no error", bad)
		}
	}
}
