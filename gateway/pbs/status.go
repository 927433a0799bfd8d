package pbs

import (
	"context"
	"fmt"
	"net/http"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// unboundedAvail is the free space reported for a tenant without a
// stored-bytes quota: object storage has no size to report, and Proxmox
// VE only needs a figure that never looks full.
const unboundedAvail = 1 << 50 // 1 PiB

// statusTimeout bounds one count for the datastore status.
const statusTimeout = time.Minute

// datastoreStatus answers GET /api2/json/admin/datastore/{store}/status
// with PBS's {total, used, avail}: Proxmox VE's storage plugin polls it
// and marks a storage that does not answer inactive. used is the stored
// (compressed, deduplicated) bytes the tenant's uploads added, as its
// stored-bytes quota counts them; total is that quota, or used plus
// unboundedAvail without one. Upstream's optional counts and gc-status
// (verbose) are left out.
func (s *Server) datastoreStatus(w http.ResponseWriter, r *http.Request) {
	p := auth.FromContext(r.Context())
	if err := storeOK(r.PathValue("store"), p); err != nil {
		s.refuse(w, r, err)
		return
	}
	st, err := s.storeStats(r.Context())
	if err != nil {
		s.refuse(w, r, fmt.Errorf("datastore status: %w", err))
		return
	}
	var used, quota int64
	for _, u := range st.GetTenants() {
		if u.GetTenant() == p.Tenant {
			used, quota = u.GetStoredBytes(), u.GetStoredBytesQuota()
		}
	}
	total, avail := used+unboundedAvail, int64(unboundedAvail)
	if quota > 0 {
		total, avail = quota, max(0, quota-used)
	}
	reply(w, map[string]int64{"total": total, "used": used, "avail": avail})
}

// storeStats returns the store's counts, reused for StatusTTL: Proxmox VE
// polls every few seconds per node, and a count lists every chunk. The
// AdminService is called as the gateway (an admin), not as the caller,
// who may not read other tenants' figures; only the caller's are sent.
func (s *Server) storeStats(ctx context.Context) (*chunkbridgev1.GetStatsResponse, error) {
	if s.Stats == nil {
		return nil, fmt.Errorf("%w: this gateway has no statistics source (Server.Stats)", apierr.ErrUnavailable)
	}
	s.statsMu.Lock()
	if s.stats != nil && time.Since(s.statsAt) < session.OrDefault(s.StatusTTL, time.Minute) {
		st := s.stats
		s.statsMu.Unlock()
		return st, nil
	}
	// One count at a time, on its own deadline: callers wait for it as
	// long as they care to, and one that goes away neither cancels it for
	// the others nor holds them behind a lock.
	c := s.statsCount
	if c == nil {
		c = &statsCount{done: make(chan struct{})}
		s.statsCount = c
		go s.count(c)
	}
	s.statsMu.Unlock()
	select {
	case <-c.done:
		if c.err != nil {
			return nil, fmt.Errorf("counting the store: %w", c.err)
		}
		return c.st, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// statsCount is one count of the store for the datastore status.
type statsCount struct {
	done chan struct{}
	st   *chunkbridgev1.GetStatsResponse
	err  error
}

// count runs c (without a caller's principal, so that none is
// forwarded) and keeps a good answer for StatusTTL.
func (s *Server) count(c *statsCount) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	c.st, c.err = s.Stats(ctx)
	cancel()
	s.statsMu.Lock()
	if c.err == nil {
		s.stats, s.statsAt = c.st, time.Now()
	}
	s.statsCount = nil
	s.statsMu.Unlock()
	close(c.done)
}
