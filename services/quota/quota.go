// Package quota is the tenants' quotas (docs/tenants.md): logical bytes,
// the sum of the sizes its published files describe, and stored bytes,
// what the chunks its uploads added to its dedup domain occupy.
//
// Usage is counted from the store and then followed in this process: a
// count is reused for TTL, and what this process adds meanwhile is added
// to it. Commits in this process reserve their bytes before they publish,
// so they never overshoot a quota together; replicas learn of each
// other's additions at their next count, so several replicas may
// overshoot by what they commit within one TTL.
package quota

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Limits returns a tenant's quotas in bytes; 0 means none.
type Limits func(tenant string) (logical, stored int64)

// Book holds the quotas and the usage this process knows.
type Book struct {
	limits Limits
	ttl    time.Duration
	now    func() time.Time

	mu      sync.Mutex
	logical map[string]*usage
	stored  storedUsage
}

// usage is one tenant's count and what was added since.
type usage struct {
	counted  int64 // from the store
	at       time.Time
	added    int64 // by this process since the count started
	reserved int64 // by commits in flight
	counting chan struct{}
}

// storedUsage is every tenant's stored bytes, from one count of the
// chunk spaces.
type storedUsage struct {
	count    func(ctx context.Context) (map[string]int64, error)
	counted  map[string]int64
	at       time.Time
	added    map[string]int64
	counting chan struct{}
}

// New returns a book of limits; ttl is how long a count is reused
// (default 30 s).
func New(limits Limits, ttl time.Duration) *Book {
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	return &Book{limits: limits, ttl: ttl, now: time.Now, logical: map[string]*usage{},
		stored: storedUsage{added: map[string]int64{}}}
}

// SetStoredCounter gives the book the count of stored bytes per tenant
// (the AdminService's count of every chunk space). Without one, stored
// bytes are what this process added since it started.
func (b *Book) SetStoredCounter(count func(ctx context.Context) (map[string]int64, error)) {
	b.mu.Lock()
	b.stored.count = count
	b.mu.Unlock()
}

func (b *Book) limitsOf(tenant string) (int64, int64) {
	if b == nil || b.limits == nil {
		return 0, 0
	}
	return b.limits(tenant)
}

// ReserveLogical admits n more logical bytes for tenant: a file about to
// be published. count counts the tenant's files in the store. The
// returned done must be called once the commit ended, with whether it
// published the file. It fails with apierr.ErrQuota, naming usage and
// limit, when the file would take the tenant over its quota.
func (b *Book) ReserveLogical(ctx context.Context, tenant string, n int64, count func(context.Context) (int64, error)) (done func(published bool), err error) {
	limit, _ := b.limitsOf(tenant)
	if limit == 0 {
		return func(bool) {}, nil
	}
	b.mu.Lock()
	u := b.logical[tenant]
	if u == nil {
		u = &usage{}
		b.logical[tenant] = u
	}
	b.mu.Unlock()
	if err := b.refreshLogical(ctx, u, count); err != nil {
		return nil, fmt.Errorf("tenant %s: count its logical bytes for its quota: %w", tenant, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	used := u.counted + u.added + u.reserved
	if used+n > limit {
		return nil, fmt.Errorf("%w: tenant %s: this file's %d bytes would bring its logical bytes to %d, over its quota of %d (in use: %d); nothing was published: delete or prune what it no longer needs, or raise quota.logical_bytes",
			apierr.ErrQuota, tenant, n, used+n, limit, used)
	}
	u.reserved += n
	return func(published bool) {
		b.mu.Lock()
		defer b.mu.Unlock()
		u.reserved -= n
		if published {
			u.added += n
		}
	}, nil
}

// CheckLogical fails as ReserveLogical would for a file of n bytes, and
// reserves nothing: a file that announces its size when it starts
// (PMXBCKUP's fixed files) is refused before any of its chunks is sent.
func (b *Book) CheckLogical(ctx context.Context, tenant string, n int64, count func(context.Context) (int64, error)) error {
	done, err := b.ReserveLogical(ctx, tenant, n, count)
	if err != nil {
		return err
	}
	done(false)
	return nil
}

// LogicalFull fails with apierr.ErrQuota when tenant's logical bytes, as
// last counted here, already reach its quota: nothing it uploads could be
// published, so its new chunks are refused too. It never counts.
func (b *Book) LogicalFull(tenant string) error {
	limit, _ := b.limitsOf(tenant)
	if limit == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	u := b.logical[tenant]
	if u == nil || u.at.IsZero() {
		return nil
	}
	if used := u.counted + u.added; used >= limit {
		return fmt.Errorf("%w: tenant %s: its files describe %d bytes, its quota is %d: nothing more can be published, so nothing more is stored for it: delete or prune what it no longer needs, or raise quota.logical_bytes",
			apierr.ErrQuota, tenant, used, limit)
	}
	return nil
}

// refreshLogical counts u again when its count is older than the TTL;
// one count at a time, the others wait for it.
func (b *Book) refreshLogical(ctx context.Context, u *usage, count func(context.Context) (int64, error)) error {
	for {
		b.mu.Lock()
		if !u.at.IsZero() && b.now().Sub(u.at) < b.ttl {
			b.mu.Unlock()
			return nil
		}
		if wait := u.counting; wait != nil {
			b.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		u.counting = make(chan struct{})
		start, addedBefore := b.now(), u.added
		b.mu.Unlock()
		n, err := count(ctx)
		b.mu.Lock()
		close(u.counting)
		u.counting = nil
		if err == nil {
			// Additions made before the count started are in it; those
			// made while it ran may be too, and stay added: usage is
			// never under-counted.
			u.counted, u.at, u.added = n, start, u.added-addedBefore
		}
		b.mu.Unlock()
		return err
	}
}

// AddStored records n stored bytes a tenant's upload added.
func (b *Book) AddStored(tenant string, n int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.stored.added[tenant] += n
	b.mu.Unlock()
}

// CheckStored fails with apierr.ErrQuota, naming usage and limit, when
// tenant's stored bytes exceed its quota: checked before an upload stores
// a new chunk and before a commit publishes.
func (b *Book) CheckStored(ctx context.Context, tenant string) error {
	_, limit := b.limitsOf(tenant)
	if limit == 0 {
		return nil
	}
	if err := b.refreshStored(ctx); err != nil {
		return fmt.Errorf("tenant %s: count its stored bytes for its quota: %w", tenant, err)
	}
	b.mu.Lock()
	used := b.stored.counted[tenant] + b.stored.added[tenant]
	b.mu.Unlock()
	if used >= limit {
		return fmt.Errorf("%w: tenant %s: its uploads store %d bytes, its quota is %d; nothing more is stored or published for it: delete or prune what it no longer needs and run gc, or raise quota.stored_bytes",
			apierr.ErrQuota, tenant, used, limit)
	}
	return nil
}

// refreshStored is refreshLogical for the stored bytes of every tenant.
// After the first count it counts in the background: an upload does not
// wait for a count of the whole store.
func (b *Book) refreshStored(ctx context.Context) error {
	b.mu.Lock()
	s := &b.stored
	if s.count == nil || (!s.at.IsZero() && b.now().Sub(s.at) < b.ttl) {
		b.mu.Unlock()
		return nil
	}
	first := s.at.IsZero()
	if s.counting == nil {
		s.counting = make(chan struct{})
		go b.countStored()
	}
	wait := s.counting
	b.mu.Unlock()
	if !first {
		return nil
	}
	select {
	case <-wait:
	case <-ctx.Done():
		return ctx.Err()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.at.IsZero() {
		return fmt.Errorf("%w: the store could not be counted", apierr.ErrUnavailable)
	}
	return nil
}

func (b *Book) countStored() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	b.mu.Lock()
	s := &b.stored
	start := b.now()
	before := make(map[string]int64, len(s.added))
	for t, n := range s.added {
		before[t] = n
	}
	count := s.count
	b.mu.Unlock()
	m, err := count(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	close(s.counting)
	s.counting = nil
	if err != nil {
		return
	}
	// Additions made before the count started are in it; those made
	// while it ran may be too, and stay counted.
	for t, n := range before {
		s.added[t] -= n
	}
	s.counted, s.at = m, start
}
