package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/chunkbridge/chunkbridge/internal/bytesize"
)

// The credentials file (YAML), usually mounted from a Kubernetes Secret:
//
//	tenants:
//	  - name: acme
//	    dedup_domain: acme      # tenants in one domain share chunks
//	    quota:                  # both optional
//	      logical_bytes: 2TiB   # sum of its published files' sizes
//	      stored_bytes: 500GiB  # chunks its uploads added to its domain
//	principals:
//	  - name: web-backup
//	    tenant: acme
//	    role: append
//	    token_sha256: 9f86d0…   # hex SHA-256 of the token; never the token
//	  - name: pmx-host-1
//	    tenant: acme
//	    role: append
//	    cert_subject: CN=pmx-host-1,O=acme
type fileFormat struct {
	Tenants    []tenantEntry    `yaml:"tenants"`
	Principals []principalEntry `yaml:"principals"`
}

type tenantEntry struct {
	Name        string `yaml:"name"`
	DedupDomain string `yaml:"dedup_domain"`
	Quota       struct {
		LogicalBytes string `yaml:"logical_bytes"`
		StoredBytes  string `yaml:"stored_bytes"`
	} `yaml:"quota"`
}

type principalEntry struct {
	Name        string `yaml:"name"`
	Tenant      string `yaml:"tenant"`
	Role        string `yaml:"role"`
	TokenSHA256 string `yaml:"token_sha256"`
	CertSubject string `yaml:"cert_subject"`
}

// Tenant is a tenant's settings.
type Tenant struct {
	Name        string
	DedupDomain string
	// Quotas in bytes; 0 means none (docs/tenants.md).
	LogicalQuota, StoredQuota int64
}

type tokenEntry struct {
	hash [32]byte
	p    Principal
}

// table is one parsed version of the file.
type table struct {
	raw     []byte
	tokens  []tokenEntry
	certs   map[string]Principal
	tenants map[string]Tenant
	byName  map[string]Principal
}

// Registry holds the principals of one credentials file and follows its
// changes. The zero value is not usable; call Load or Static.
type Registry struct {
	path  string
	log   *slog.Logger
	cur   atomic.Pointer[table]
	extra []tokenEntry // AddToken's: set before use, kept across reloads

	changeMu sync.Mutex
	changed  chan struct{} // closed at the next change, then replaced
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)

// principalRE is nameRE plus '!' for principal names only: a Proxmox API
// token's id is user@realm!tokenname. Tenants and domains name store
// paths and keep nameRE.
var principalRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@!-]{0,127}$`)

// Load reads the credentials file at path.
func Load(path string, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.Default()
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	t, err := parse(raw)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	r := &Registry{path: path, log: log}
	r.cur.Store(t)
	return r, nil
}

// Static is a registry of fixed principals, each with a token: for the
// single --auth-token-file and for tests.
func Static(tokens map[string]Principal) *Registry {
	t := &table{certs: map[string]Principal{}, tenants: map[string]Tenant{DefaultTenant: {Name: DefaultTenant, DedupDomain: DefaultTenant}}, byName: map[string]Principal{}}
	for tok, p := range tokens {
		if p.Domain == "" {
			p.Domain = DefaultDomain
		}
		t.tokens = append(t.tokens, tokenEntry{sha256.Sum256([]byte(tok)), p})
		t.byName[p.Name] = p
	}
	r := &Registry{log: slog.Default()}
	r.cur.Store(t)
	return r
}

func parse(raw []byte) (*table, error) {
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) /* an empty file */ {
		return nil, fmt.Errorf("not valid YAML for a credentials file: %w", err)
	}
	t := &table{raw: raw, certs: map[string]Principal{}, tenants: map[string]Tenant{}, byName: map[string]Principal{}}
	for i, e := range f.Tenants {
		if !nameRE.MatchString(e.Name) {
			return nil, fmt.Errorf("tenants[%d]: name %q: want letters, digits, '.', '_', '@' or '-'", i, e.Name)
		}
		if _, dup := t.tenants[e.Name]; dup {
			return nil, fmt.Errorf("tenants[%d]: tenant %q is listed twice", i, e.Name)
		}
		if e.DedupDomain == "" {
			e.DedupDomain = e.Name
		}
		if !nameRE.MatchString(e.DedupDomain) {
			return nil, fmt.Errorf("tenants[%d] (%s): dedup_domain %q: want letters, digits, '.', '_', '@' or '-'", i, e.Name, e.DedupDomain)
		}
		if e.Name == DefaultTenant && e.DedupDomain != DefaultDomain {
			// Its files predate domains and reference the default chunks.
			return nil, fmt.Errorf("tenants[%d]: the tenant %s always uses the dedup domain %s", i, DefaultTenant, DefaultDomain)
		}
		tn := Tenant{Name: e.Name, DedupDomain: e.DedupDomain}
		for _, q := range []struct {
			field, v string
			to       *int64
		}{{"logical_bytes", e.Quota.LogicalBytes, &tn.LogicalQuota}, {"stored_bytes", e.Quota.StoredBytes, &tn.StoredQuota}} {
			if q.v == "" {
				continue
			}
			n, err := bytesize.Parse(q.v)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("tenants[%d] (%s): quota.%s: %q: want a size above 0 such as 500GiB, or no quota.%s for none", i, e.Name, q.field, q.v, q.field)
			}
			*q.to = n
		}
		t.tenants[e.Name] = tn
	}
	if _, ok := t.tenants[DefaultTenant]; !ok {
		t.tenants[DefaultTenant] = Tenant{Name: DefaultTenant, DedupDomain: DefaultTenant}
	}
	names := map[string]bool{}
	for i, e := range f.Principals {
		where := fmt.Sprintf("principals[%d] (%s)", i, e.Name)
		if !principalRE.MatchString(e.Name) {
			return nil, fmt.Errorf("principals[%d]: name %q: want letters, digits, '.', '_', '@', '!' or '-'", i, e.Name)
		}
		if names[e.Name] {
			return nil, fmt.Errorf("%s: the name is used twice", where)
		}
		names[e.Name] = true
		if e.Tenant == "" {
			e.Tenant = DefaultTenant
		}
		if _, ok := t.tenants[e.Tenant]; !ok {
			return nil, fmt.Errorf("%s: tenant %q is not in tenants", where, e.Tenant)
		}
		role, err := ParseRole(e.Role)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		p := Principal{Name: e.Name, Tenant: e.Tenant, Role: role, Domain: t.tenants[e.Tenant].DedupDomain}
		t.byName[e.Name] = p
		switch {
		case e.TokenSHA256 != "" && e.CertSubject != "":
			return nil, fmt.Errorf("%s: give token_sha256 or cert_subject, not both", where)
		case e.TokenSHA256 != "":
			h, err := hex.DecodeString(strings.TrimSpace(e.TokenSHA256))
			if err != nil || len(h) != 32 {
				return nil, fmt.Errorf("%s: token_sha256 must be 64 hex digits (the SHA-256 of the token, as `chunkbridge auth add-token` prints it)", where)
			}
			t.tokens = append(t.tokens, tokenEntry{[32]byte(h), p})
		case e.CertSubject != "":
			if _, dup := t.certs[e.CertSubject]; dup {
				return nil, fmt.Errorf("%s: cert_subject %q belongs to another principal too", where, e.CertSubject)
			}
			t.certs[e.CertSubject] = p
		default:
			return nil, fmt.Errorf("%s: give token_sha256 or cert_subject", where)
		}
	}
	return t, nil
}

// Tenant returns a tenant's settings from the file; false for a tenant it
// does not list (one whose files remain after its entry was removed).
func (r *Registry) Tenant(name string) (Tenant, bool) {
	t, ok := r.cur.Load().tenants[name]
	return t, ok
}

// Tenants returns every tenant the file lists.
func (r *Registry) Tenants() []Tenant {
	var out []Tenant
	for _, t := range r.cur.Load().tenants {
		out = append(out, t)
	}
	return out
}

// ErrUnknownCredential: the token or certificate names no principal.
var ErrUnknownCredential = errors.New("the credential names no principal")

// Token returns the principal whose token this is. Every stored hash is
// compared, in constant time, so the time taken says nothing about which
// one matched or how closely.
func (r *Registry) Token(token string) (Principal, error) {
	h := sha256.Sum256([]byte(token))
	var found Principal
	ok := 0
	for _, list := range [][]tokenEntry{r.cur.Load().tokens, r.extra} {
		for _, e := range list {
			m := subtle.ConstantTimeCompare(h[:], e.hash[:])
			if m == 1 {
				found = e.p
			}
			ok |= m
		}
	}
	if ok == 0 {
		return Principal{}, ErrUnknownCredential
	}
	return found, nil
}

// AddToken adds a principal with a token that is not in the file (the
// single --auth-token-file token, the in-process services' own). Call it
// before the registry is used.
func (r *Registry) AddToken(token string, p Principal) {
	if p.Domain == "" {
		p.Domain = DefaultDomain
	}
	r.extra = append(r.extra, tokenEntry{sha256.Sum256([]byte(token)), p})
}

// Subject returns the principal of a TLS client certificate subject (as
// pkix.Name.String() spells it, e.g. "CN=pmx-host-1,O=acme").
func (r *Registry) Subject(subject string) (Principal, error) {
	p, ok := r.cur.Load().certs[subject]
	if !ok {
		return Principal{}, ErrUnknownCredential
	}
	return p, nil
}

// ByName returns the principal of that name in the credentials file (or
// Static's map), whatever its credential: for a listener that
// authenticated the caller itself, such as sshd running casync-remote as
// a key's forced command (`--principal NAME`). The principals AddToken
// added are not found: they are no one a key could be mapped to.
func (r *Registry) ByName(name string) (Principal, error) {
	p, ok := r.cur.Load().byName[name]
	if !ok {
		return Principal{}, fmt.Errorf("%w: no principal is named %q", ErrUnknownCredential, name)
	}
	return p, nil
}

// Watch re-reads the file every interval until ctx ends and switches to
// it when its content changed and parses; a file that does not parse is
// reported and the previous principals stay in force.
func (r *Registry) Watch(ctx context.Context, interval time.Duration) {
	if r.path == "" {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.Reload()
	}
}

// Reload reads the file once now; it reports whether the principals
// changed.
func (r *Registry) Reload() bool {
	raw, err := os.ReadFile(r.path)
	if err != nil {
		r.log.Error("credentials file unreadable; the previous principals stay in force", "path", r.path, "err", err)
		return false
	}
	if bytes.Equal(raw, r.cur.Load().raw) {
		return false
	}
	t, err := parse(raw)
	if err != nil {
		r.log.Error("credentials file changed but is invalid; the previous principals stay in force", "path", r.path, "err", err)
		return false
	}
	r.cur.Store(t)
	r.changeMu.Lock()
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
	r.changeMu.Unlock()
	r.log.Info("credentials file reloaded", "path", r.path, "principals", len(t.tokens)+len(t.certs), "tenants", len(t.tenants))
	return true
}

// Changes returns a channel that is closed when the principals next
// change (a reload of the file that changed it).
func (r *Registry) Changes() <-chan struct{} {
	r.changeMu.Lock()
	defer r.changeMu.Unlock()
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	return r.changed
}

// ErrRevoked ends a session whose credential no longer names the
// principal it started as.
var ErrRevoked = errors.New("the session's credential was revoked or changed in the credentials file")

// Follow returns ctx, cancelled with cause ErrRevoked as soon as a change
// of r makes recheck (the session's own authentication, run again) fail
// or name another principal than p: a revoked token or certificate, a
// weaker role, another tenant. Long sessions (casync, PMXBCKUP) follow
// it, so that revoking a principal also ends what it has open. The
// caller calls stop when the session ends. A nil r follows nothing.
func (r *Registry) Follow(ctx context.Context, p Principal, recheck func() (Principal, error)) (_ context.Context, stop func()) {
	if r == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		for {
			ch := r.Changes()
			// A change between the session's authentication and this
			// first Changes call is caught by checking once now.
			if now, err := recheck(); err != nil || now != p {
				cancel(fmt.Errorf("%w: %s", ErrRevoked, p.Name))
				return
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}

// NewToken returns a new random token and the hex SHA-256 the credentials
// file stores for it.
func NewToken() (token, hash string) {
	var b [32]byte
	rand.Read(b[:])
	token = "cbt_" + base64.RawURLEncoding.EncodeToString(b[:])
	h := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(h[:])
}
