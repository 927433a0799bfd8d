package chunk

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// The serving rule (docs/tenants.md): in a dedup domain that several
// tenants share, a chunk's data is served only to a principal whose tenant
// references the chunk in one of its files, or uploaded it. Otherwise a
// tenant that learned a chunk id (from a leaked index, say) could read
// another tenant's data. A chunk it may not read answers as a chunk that
// is not stored. Admins read everything; a domain with one tenant needs
// no check.

const (
	// refsMinAge is how long a tenant's reference set is trusted before a
	// miss rebuilds it (files committed on another replica since): at
	// most one rebuild per tenant per refsMinAge, whatever a client asks.
	refsMinAge = 10 * time.Second
	// sharingTTL is how long the bindings read from the store are reused
	// to tell which domains are shared.
	sharingTTL = 30 * time.Second
	// recentMax bounds the ids a tenant uploaded or committed through this
	// process that are remembered outside its reference set.
	recentMax = 1 << 16
)

// References streams the chunk ids the files of tenant reference; the
// catalog provides it (SetReferences).
type References func(ctx context.Context, tenant string, each func(ID) error) error

// serving applies the rule.
type serving struct {
	mu      sync.Mutex
	refs    References
	tenants map[string]*tenantRefs
	shared  map[string]bool   // domain → more than one tenant is bound to it
	bound   map[string]string // the bindings read: tenant → domain
	// absent holds the tenants whose binding a read of the bindings
	// lacked: their domain counts as shared until the next read, which
	// their reads do not hasten (each would list and read every binding).
	absent  map[string]bool
	readAt  time.Time
	loading chan struct{}
}

// tenantRefs is what one tenant may read: the first 8 bytes of every id
// its files referenced at the last build, sorted (8 bytes an id: a guess
// that matches one by chance needs 2^64 tries), and what it added since.
type tenantRefs struct {
	prefixes []uint64
	at       time.Time
	building *rebuild
	recent   map[ID]struct{}
}

// rebuild is one rebuild of a tenant's set in progress; err is set before
// done is closed.
type rebuild struct {
	done chan struct{}
	err  error
}

// SetReferences gives the service its tenants' references; until then
// (and for a service without a catalog) shared domains serve every chunk.
func (s *Service) SetReferences(r References) {
	s.serving.mu.Lock()
	s.serving.refs = r
	s.serving.mu.Unlock()
}

// Referenced tells the service that tenant's files now reference ids (a
// commit in this process), or that its upload stored them.
func (s *Service) Referenced(tenant string, ids ...ID) {
	sv := &s.serving
	sv.mu.Lock()
	defer sv.mu.Unlock()
	tr := sv.tenant(tenant)
	for _, id := range ids {
		if len(tr.recent) >= recentMax {
			break // the next rebuild finds the committed ones
		}
		tr.recent[id] = struct{}{}
	}
}

// uploaded records that ctx's principal uploaded id, so that it may read
// it back before a file of its references it. Admins read everything and
// need no record.
func (s *Service) uploaded(ctx context.Context, id ID) {
	if p := auth.FromContext(ctx); p.Role != auth.RoleAdmin {
		s.Referenced(p.Tenant, id)
	}
}

func (sv *serving) tenant(name string) *tenantRefs {
	tr := sv.tenants[name]
	if tr == nil {
		tr = &tenantRefs{recent: map[ID]struct{}{}}
		if sv.tenants == nil {
			sv.tenants = map[string]*tenantRefs{}
		}
		sv.tenants[name] = tr
	}
	return tr
}

// mayRead returns nil when ctx's principal may read id's data from d,
// else apierr.ErrNotFound, as for a chunk that is not stored.
func (s *Service) mayRead(ctx context.Context, d *domain, id ID) error {
	if _, ok := ctx.Value(domainKey{}).(string); ok {
		return nil // garbage collection, verification
	}
	p := auth.FromContext(ctx)
	if p.Role == auth.RoleAdmin {
		return nil
	}
	shared, err := s.sharedDomain(ctx, p.Tenant, d.name)
	if err != nil {
		return err
	}
	if !shared {
		return nil
	}
	ok, err := s.serving.references(ctx, p.Tenant, id)
	if err != nil {
		return fmt.Errorf("chunk %s: which chunks tenant %s references: %w", id, p.Tenant, err)
	}
	if !ok {
		return fmt.Errorf("chunk %s: %w", id, apierr.ErrNotFound)
	}
	return nil
}

// sharedDomain reports whether more than one tenant is bound to domain,
// from the bindings in the store: read again after sharingTTL, when this
// process bound a tenant, and when the bindings read lack tenant's own
// (still lacking it, the domain counts as shared for it until the next
// read: its reads do not each read every binding again).
// A tenant that joins the domain on another replica is seen within
// sharingTTL.
func (s *Service) sharedDomain(ctx context.Context, tenant, domain string) (bool, error) {
	sv := &s.serving
	for {
		sv.mu.Lock()
		if sv.refs == nil {
			sv.mu.Unlock()
			return false, nil
		}
		_, known := sv.bound[tenant]
		if (known || sv.absent[tenant]) && !sv.readAt.IsZero() && time.Since(sv.readAt) < sharingTTL {
			shared := !known || sv.shared[domain]
			sv.mu.Unlock()
			return shared, nil
		}
		if wait := sv.loading; wait != nil {
			sv.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		sv.loading = make(chan struct{})
		sv.mu.Unlock()
		b, err := Bindings(ctx, s.store)
		sv.mu.Lock()
		close(sv.loading)
		sv.loading = nil
		if err != nil {
			sv.mu.Unlock()
			return false, err
		}
		count := map[string]int{}
		for _, d := range b {
			count[d]++
		}
		sv.shared = map[string]bool{}
		for d, n := range count {
			sv.shared[d] = n > 1
		}
		sv.bound, sv.readAt = b, time.Now()
		_, known = b[tenant]
		if sv.absent == nil {
			sv.absent = map[string]bool{}
		}
		for t := range sv.absent {
			if _, ok := b[t]; ok {
				delete(sv.absent, t)
			}
		}
		if !known {
			sv.absent[tenant] = true
		}
		sv.mu.Unlock()
		if !known {
			// No binding in the store, yet this process routes the tenant
			// to domain (its binding was deleted since): fail closed, the
			// tenant reads what it references or uploaded.
			return true, nil
		}
	}
}

// bindingsChanged makes the next read look at the bindings again.
func (sv *serving) bindingsChanged() {
	sv.mu.Lock()
	sv.readAt = time.Time{}
	sv.mu.Unlock()
}

// testHookWaitRebuild, if set, runs when a call starts waiting for another
// call's rebuild of a tenant's references.
var testHookWaitRebuild func()

// references reports whether tenant references or added id, rebuilding
// its set once when it is older than refsMinAge.
func (sv *serving) references(ctx context.Context, tenant string, id ID) (bool, error) {
	prefix := binary.BigEndian.Uint64(id[:8])
	rebuilt := false
	for {
		sv.mu.Lock()
		tr := sv.tenant(tenant)
		if _, ok := tr.recent[id]; ok {
			sv.mu.Unlock()
			return true, nil
		}
		if _, ok := slices.BinarySearch(tr.prefixes, prefix); ok {
			sv.mu.Unlock()
			return true, nil
		}
		if rebuilt || (!tr.at.IsZero() && time.Since(tr.at) < refsMinAge) {
			sv.mu.Unlock()
			return false, nil
		}
		if b := tr.building; b != nil {
			sv.mu.Unlock()
			if testHookWaitRebuild != nil {
				testHookWaitRebuild()
			}
			select {
			case <-b.done:
				// A failed rebuild proves nothing: try again, as this
				// call (never "not stored" because another call failed).
				rebuilt = b.err == nil
				continue
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		b := &rebuild{done: make(chan struct{})}
		tr.building = b
		refs := sv.refs
		sv.mu.Unlock()
		start := time.Now()
		// Files repeat ids (every snapshot of a disk, chunks within a
		// file): the set is compacted whenever it doubles, so its memory
		// follows the distinct ids, not the references a tenant can pile up.
		var ps []uint64
		distinct := 0
		err := refs(ctx, tenant, func(id ID) error {
			ps = append(ps, binary.BigEndian.Uint64(id[:8]))
			if len(ps) >= 2*distinct+1<<16 {
				slices.Sort(ps)
				ps = slices.Compact(ps)
				distinct = len(ps)
			}
			return nil
		})
		slices.Sort(ps)
		ps = slices.Clip(slices.Compact(ps))
		sv.mu.Lock()
		b.err = err
		close(b.done)
		tr.building = nil
		if err == nil {
			tr.prefixes, tr.at = ps, start
			if len(tr.recent) >= recentMax {
				// Full: what was committed is in the build now; uploads
				// not yet committed are read back after their commit.
				tr.recent = map[ID]struct{}{}
			}
		}
		sv.mu.Unlock()
		if err != nil {
			return false, err
		}
		rebuilt = true
	}
}
