package catalog

import (
	"context"
	"fmt"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/storage"

	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

const (
	indexPrefix    = "indexes/"
	snapshotPrefix = caindex.SnapshotPrefix
)

// TenantPrefix is where tenant's indexes and snapshots live in the store
// (docs/tenants.md): the default tenant's at the root, where they were
// before tenants existed; any other tenant T's under tenants/T/.
func TenantPrefix(tenant string) string {
	if tenant == auth.DefaultTenant {
		return ""
	}
	return tenantsPrefix + tenant + "/"
}

const tenantsPrefix = "tenants/"

// view is the store as ctx's principal's tenant sees it: its own names
// only, whatever name a client sends.
func (s *Server) view(ctx context.Context) storage.Store {
	return storage.Prefixed(s.store, TenantPrefix(auth.FromContext(ctx).Tenant))
}

// IndexName checks a casync index name and returns it cleaned.
func IndexName(name string) (string, error) {
	clean, err := caindex.CleanName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", apierr.ErrInvalid, err)
	}
	return clean, nil
}

// writableIndexName also refuses the names reserved for snapshots.
func writableIndexName(name string) (string, error) {
	clean, err := caindex.CleanWritableName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", apierr.ErrInvalid, err)
	}
	return clean, nil
}
