package pbs_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
)

// The datastore status Proxmox VE polls: PBS's {total, used, avail} from
// the caller's tenant's stored bytes and stored-bytes quota, the count
// reused for StatusTTL, another datastore not found.
func TestDatastoreStatus(t *testing.T) {
	var counts atomic.Int32
	h := newHarnessWith(t, func(s *pbs.Server) {
		s.Stats = func(ctx context.Context) (*chunkbridgev1.GetStatsResponse, error) {
			counts.Add(1)
			return &chunkbridgev1.GetStatsResponse{Tenants: []*chunkbridgev1.TenantUsage{
				{Tenant: "default", StoredBytes: 3000},
				{Tenant: "other", StoredBytes: 99, StoredBytesQuota: 100},
			}}, nil
		}
	})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	get := func(store string) (int, map[string]int64) {
		t.Helper()
		resp, err := hc.Get("https://" + h.addr + "/api2/json/admin/datastore/" + store + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Data map[string]int64 }
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Data
	}
	st, d := get("default")
	if st != 200 || d["used"] != 3000 || d["avail"] != 1<<50 || d["total"] != 3000+1<<50 || len(d) != 3 {
		t.Fatalf("status without a quota: %d %v", st, d)
	}
	// Reused: the second poll does not count the store again.
	if st, d := get("default"); st != 200 || d["used"] != 3000 || counts.Load() != 1 {
		t.Fatalf("second poll: %d %v, %d counts", st, d, counts.Load())
	}
	if st, _ := get("other"); st != http.StatusNotFound {
		t.Fatalf("another datastore: %d", st)
	}

	// With a stored-bytes quota (and a fresh count).
	h = newHarnessWith(t, func(s *pbs.Server) {
		s.Stats = func(ctx context.Context) (*chunkbridgev1.GetStatsResponse, error) {
			return &chunkbridgev1.GetStatsResponse{Tenants: []*chunkbridgev1.TenantUsage{{Tenant: "default", StoredBytes: 3000, StoredBytesQuota: 10000}}}, nil
		}
	})
	if st, d := get("default"); st != 200 || d["total"] != 10000 || d["used"] != 3000 || d["avail"] != 7000 {
		t.Fatalf("status with a quota: %d %v", st, d)
	}
}
