package auth

import (
	"fmt"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// NewTokenEntry creates a principal with a new random token: the token
// (to hand to the client once; it is stored nowhere) and the credentials
// file's entry for it, a YAML list item to add under "principals:". An
// empty tenant is DefaultTenant. The name, tenant and role are checked as
// Load checks them; a tenant other than DefaultTenant must also be listed
// under "tenants:".
func NewTokenEntry(name, tenant, role string) (token, hash, entry string, err error) {
	if !principalRE.MatchString(name) {
		return "", "", "", fmt.Errorf("name %q: want 1 to 128 letters, digits, '.', '_', '@', '!' or '-', starting with a letter or digit", name)
	}
	if tenant == "" {
		tenant = DefaultTenant
	}
	if !nameRE.MatchString(tenant) {
		return "", "", "", fmt.Errorf("tenant %q: want 1 to 128 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", tenant)
	}
	if _, err := ParseRole(role); err != nil {
		return "", "", "", err
	}
	token, hash = NewToken()
	// principalEntry's fields, without the certificate's.
	type tokenPrincipal struct {
		Name        string `yaml:"name"`
		Tenant      string `yaml:"tenant"`
		Role        string `yaml:"role"`
		TokenSHA256 string `yaml:"token_sha256"`
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(map[string][]tokenPrincipal{"principals": {{name, tenant, role, hash}}}); err != nil {
		return "", "", "", err
	}
	// The list item alone, indented as under "principals:".
	_, item, _ := strings.Cut(b.String(), "\n")
	return token, hash, item, nil
}
