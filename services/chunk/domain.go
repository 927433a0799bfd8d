package chunk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Dedup domains (docs/tenants.md): each is a chunk space of its own. The
// default domain's chunks are at the root of the store (chunks/…, casync's
// layout, where they were before domains existed); any other domain D's
// are under domains/D/. A principal's uploads and reads go to its tenant's
// domain, so tenants in different domains share nothing, not even the
// answer "already stored".

// EncryptedPrefix holds, inside a domain's chunk space, the space of
// encrypted chunks (docs/pbs.md, encrypted backups): the DataBlobs
// clients sent, which the server cannot decrypt, so cannot re-hash. It has
// the plain space's layout under its own prefix (encrypted/chunks/…,
// encrypted/quarantine/…), so that garbage collection, verification and
// statistics walk it with the plain space's code; casync, which reads
// chunks/ only, never sees it. The .cacnk suffix there names the layout,
// not the content: each object is a DataBlob, not a zstd frame.
const EncryptedPrefix = "encrypted/"

type encryptedKey struct{}

// Encrypted returns ctx for calls on the encrypted space of the domain
// they work in: Put stores the DataBlob as sent after its CRC check,
// FindMissing, Sizes, Stat and Get look only there. A plain chunk and an
// encrypted chunk of one id are two objects, and neither answers an
// existence check for the other.
func Encrypted(ctx context.Context) context.Context {
	return context.WithValue(ctx, encryptedKey{}, true)
}

// IsEncrypted reports whether ctx works on the encrypted space.
func IsEncrypted(ctx context.Context) bool {
	e, _ := ctx.Value(encryptedKey{}).(bool)
	return e
}

// DomainPrefix is where domain's chunk space lives in the store.
func DomainPrefix(domain string) string {
	if domain == auth.DefaultDomain {
		return ""
	}
	return "domains/" + domain + "/"
}

// BindingPrefix holds one object per tenant, admin/tenants/<tenant>,
// whose content is the name of the tenant's dedup domain. It is written
// before the tenant's first chunk or file is stored and never changed:
// the tenant's files reference chunks in that domain, so a credentials
// file that later moves the tenant elsewhere is refused instead of
// making its files unreadable. Garbage collection and verification read
// it to know which domain each tenant's files belong to. The default
// tenant has none: it is always in the default domain.
const BindingPrefix = "admin/tenants/"

// maxBinding bounds a binding object as read back.
const maxBinding = 256

type domainKey struct{}

// InDomain returns ctx for in-process callers that work on one domain
// whatever their principal's (garbage collection, verification): the
// chunk service uses domain for every call made with it, and checks no
// binding. It cannot be set through gRPC.
func InDomain(ctx context.Context, domain string) context.Context {
	return context.WithValue(ctx, domainKey{}, domain)
}

// domain is one dedup domain as this process uses it.
type domain struct {
	name      string
	encrypted bool   // the domain's encrypted space
	prefix    string // where store is in the root
	num       uint32 // its number in the presence cache's keys
	store     storage.Store
}

// spaceKey names a chunk space: a domain's plain or encrypted one.
type spaceKey struct {
	name      string
	encrypted bool
}

// domains holds the domains this process has used, and the tenant
// bindings it has checked.
type domains struct {
	root storage.Store
	// onBind is called when this process bound a tenant to a domain.
	onBind func()
	mu     sync.RWMutex
	byNm   map[spaceKey]*domain
	bound  map[string]string // tenant → domain, as read or written
}

func newDomains(root storage.Store) *domains {
	d := &domains{root: root, byNm: map[spaceKey]*domain{}, bound: map[string]string{}}
	d.get(auth.DefaultDomain, false) // number 0
	return d
}

// get returns a domain's plain or encrypted space; each has its own
// number, so the presence cache never answers for the other.
func (ds *domains) get(name string, encrypted bool) *domain {
	k := spaceKey{name, encrypted}
	ds.mu.RLock()
	d, ok := ds.byNm[k]
	ds.mu.RUnlock()
	if ok {
		return d
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if d, ok := ds.byNm[k]; ok {
		return d
	}
	prefix := DomainPrefix(name)
	if encrypted {
		prefix += EncryptedPrefix
	}
	d = &domain{name: name, encrypted: encrypted, prefix: prefix, num: uint32(len(ds.byNm)), store: storage.Prefixed(ds.root, prefix)}
	ds.byNm[k] = d
	return d
}

// count is how many domains have numbers.
func (ds *domains) count() uint32 {
	ds.mu.RLock()
	defer ds.mu.RUnlock()
	return uint32(len(ds.byNm))
}

// of returns the domain ctx works in: InDomain's, else its principal's,
// after checking the principal's tenant is bound to it. strict makes the
// check for admins too (a commit: their files are their tenant's).
func (ds *domains) of(ctx context.Context, strict bool) (*domain, error) {
	enc := IsEncrypted(ctx)
	if name, ok := ctx.Value(domainKey{}).(string); ok {
		return ds.get(name, enc), nil
	}
	p := auth.FromContext(ctx)
	name := p.DedupDomain()
	if p.Role == auth.RoleAdmin && !strict {
		// An admin works on any domain's chunks (verify --repair-from
		// names one); its own files still go through the strict check.
		return ds.get(name, enc), nil
	}
	if p.Tenant != auth.DefaultTenant || name != auth.DefaultDomain {
		if err := ds.bind(ctx, p.Tenant, name); err != nil {
			return nil, err
		}
	}
	return ds.get(name, enc), nil
}

// bind checks that tenant is bound to domain, binding it if it is not
// bound yet.
func (ds *domains) bind(ctx context.Context, tenant, name string) error {
	ds.mu.RLock()
	got, ok := ds.bound[tenant]
	ds.mu.RUnlock()
	if !ok {
		if tenant == auth.DefaultTenant {
			got = auth.DefaultDomain
		} else {
			var err error
			if got, err = ds.readOrWrite(ctx, tenant, name); err != nil {
				return err
			}
		}
		ds.mu.Lock()
		ds.bound[tenant] = got
		ds.mu.Unlock()
	}
	if got != name {
		return fmt.Errorf("%w: tenant %s is bound to the dedup domain %s in this store, where its files' chunks are; the credentials file puts it in %s: set its dedup_domain back to %s",
			apierr.ErrFailedPrecondition, tenant, got, name, got)
	}
	return nil
}

func (ds *domains) readOrWrite(ctx context.Context, tenant, name string) (string, error) {
	key := BindingPrefix + tenant
	for range 2 {
		got, err := readBinding(ctx, ds.root, key)
		if err == nil {
			return got, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return "", fmt.Errorf("tenant %s: read its dedup-domain binding: %w", tenant, err)
		}
		created, err := ds.root.PutIfAbsent(ctx, key, strings.NewReader(name), int64(len(name)), storage.Metadata{"tenant": tenant})
		if err != nil {
			return "", fmt.Errorf("tenant %s: bind it to the dedup domain %s: %w", tenant, name, err)
		}
		if created && ds.onBind != nil {
			ds.onBind()
		}
		// Read back what won: another replica may have bound it first.
	}
	return "", fmt.Errorf("tenant %s: its dedup-domain binding %s vanished while it was written", tenant, key)
}

func readBinding(ctx context.Context, s storage.Store, key string) (string, error) {
	rc, _, err := s.Get(ctx, key)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxBinding))
	if err != nil {
		return "", err
	}
	return string(bytes.TrimSpace(b)), nil
}

// Bindings reads every tenant's dedup domain from store (the root):
// the default tenant's, and one per binding object.
func Bindings(ctx context.Context, store storage.Store) (map[string]string, error) {
	out := map[string]string{auth.DefaultTenant: auth.DefaultDomain}
	var keys []string
	if err := store.List(ctx, BindingPrefix, func(i storage.Info) error {
		keys = append(keys, i.Key)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list tenant bindings: %w", err)
	}
	for _, k := range keys {
		d, err := readBinding(ctx, store, k)
		if err != nil {
			return nil, fmt.Errorf("tenant binding %s: %w", k, err)
		}
		out[strings.TrimPrefix(k, BindingPrefix)] = d
	}
	return out, nil
}

// DomainStore is domain's chunk space: its chunks/ and quarantine/.
func (s *Service) DomainStore(domain string) storage.Store { return s.domains.get(domain, false).store }

// EncryptedStore is domain's encrypted space, laid out as DomainStore.
func (s *Service) EncryptedStore(domain string) storage.Store {
	return s.domains.get(domain, true).store
}

// DomainOf is the chunk space ctx's principal works in, once its
// tenant's binding is checked (written, for a tenant's first use): a
// commit calls it before it publishes anything.
func (s *Service) DomainOf(ctx context.Context) (storage.Store, error) {
	d, err := s.domains.of(ctx, true)
	if err != nil {
		return nil, err
	}
	return d.store, nil
}
