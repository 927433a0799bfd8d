package catalog

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Namespaces (PBS's, docs/pbs.md "Namespaces") are paths inside a tenant.
// They mirror PBS's datastore layout: namespace a/b's snapshots are under
// snapshots/ns/a/ns/b/<type>/<id>/<time>/, the root's where they always
// were. "ns" is no backup type, so the two cannot be confused. A namespace
// exists when its marker (snapshots/ns/a/ns/b/.namespace) does: PBS
// creates namespaces explicitly and refuses a backup into a missing one.

const (
	// MaxNamespaceDepth, MaxNamespaceLen and maxNSComponent are PBS's
	// limits (a component is at most 32 bytes in its create API).
	MaxNamespaceDepth = 7
	MaxNamespaceLen   = 256
	maxNSComponent    = 32
	nsLevel           = "ns"
	namespaceMarker   = ".namespace"
)

var nsComponentPattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// CheckNamespace checks a namespace spelled "a/b" ("" is the root).
func CheckNamespace(ns string) error {
	if ns == "" {
		return nil
	}
	if len(ns) > MaxNamespaceLen {
		return fmt.Errorf("%w: namespace %q: at most %d bytes", apierr.ErrInvalid, ns, MaxNamespaceLen)
	}
	parts := strings.Split(ns, "/")
	if len(parts) > MaxNamespaceDepth {
		return fmt.Errorf("%w: namespace %q: %d levels, at most %d", apierr.ErrInvalid, ns, len(parts), MaxNamespaceDepth)
	}
	for _, c := range parts {
		if len(c) > maxNSComponent || !nsComponentPattern.MatchString(c) {
			return fmt.Errorf("%w: namespace %q: component %q: want [A-Za-z0-9_][A-Za-z0-9._-]*, at most %d bytes", apierr.ErrInvalid, ns, c, maxNSComponent)
		}
	}
	return nil
}

// nsDepth is the number of levels of ns.
func nsDepth(ns string) int {
	if ns == "" {
		return 0
	}
	return strings.Count(ns, "/") + 1
}

// nsDir is ns's directory relative to snapshots/: "" for the root,
// "ns/a/ns/b/" for a/b.
func nsDir(ns string) string {
	if ns == "" {
		return ""
	}
	return nsLevel + "/" + strings.ReplaceAll(ns, "/", "/"+nsLevel+"/") + "/"
}

// nsMarkerKey is the key of ns's marker in a tenant's view.
func nsMarkerKey(ns string) string { return snapshotPrefix + nsDir(ns) + namespaceMarker }

// within reports whether ns is base or below it by at most depth levels.
func within(ns, base string, depth int) bool {
	if base != "" {
		if ns != base && !strings.HasPrefix(ns, base+"/") {
			return false
		}
	}
	return nsDepth(ns)-nsDepth(base) <= depth
}

// splitNamespace takes the namespace levels off a path relative to
// snapshots/: "ns/a/ns/b/host/x/…" is namespace a/b and "host/x/…".
func splitNamespace(parts []string) (string, []string, error) {
	var comps []string
	for len(parts) >= 2 && parts[0] == nsLevel {
		comps = append(comps, parts[1])
		parts = parts[2:]
	}
	ns := strings.Join(comps, "/")
	if err := CheckNamespace(ns); err != nil {
		return "", nil, err
	}
	return ns, parts, nil
}

// namespaceExists reports whether ns exists in ctx's tenant (the root
// always does).
func (s *Server) namespaceExists(ctx context.Context, ns string) error {
	if err := CheckNamespace(ns); err != nil {
		return err
	}
	if ns == "" {
		return nil
	}
	_, err := s.view(ctx).Stat(ctx, nsMarkerKey(ns))
	if errors.Is(err, storage.ErrNotFound) {
		// PBS's words: clients look for "namespace not found".
		return fmt.Errorf("%w: namespace not found: %q; create it first (proxmox-backup-client namespace create, or POST /v1/namespaces)", apierr.ErrNotFound, ns)
	}
	if err != nil {
		return fmt.Errorf("namespace %q: %w", ns, err)
	}
	return nil
}

// namespaces lists the namespaces of ctx's tenant that exist, below base
// by at most depth levels, base included, in name order.
func (s *Server) namespaces(ctx context.Context, base string, depth int) ([]string, error) {
	out := []string{base}
	err := s.view(ctx).List(ctx, snapshotPrefix+nsDir(base)+nsLevel+"/", func(i storage.Info) error {
		rel := strings.TrimPrefix(i.Key, snapshotPrefix)
		parts := strings.Split(rel, "/")
		if parts[len(parts)-1] != namespaceMarker {
			return nil
		}
		ns, rest, err := splitNamespace(parts[:len(parts)-1])
		if err != nil || len(rest) != 0 || ns == base || !within(ns, base, depth) {
			return nil
		}
		out = append(out, ns)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list namespaces under %q: %w", base, err)
	}
	sort.Strings(out[1:])
	return out, nil
}

// ListNamespaces lists a namespace and those below it.
func (s *Server) ListNamespaces(ctx context.Context, req *chunkbridgev1.ListNamespacesRequest) (*chunkbridgev1.ListNamespacesResponse, error) {
	if err := auth.Check(ctx, auth.Read, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	depth := MaxNamespaceDepth
	if req.MaxDepth != nil {
		depth = int(req.GetMaxDepth())
		if depth < 0 || depth > MaxNamespaceDepth {
			return nil, apierr.Status(fmt.Errorf("%w: max depth %d: want 0 to %d", apierr.ErrInvalid, depth, MaxNamespaceDepth))
		}
	}
	if err := s.namespaceExists(ctx, req.GetParent()); err != nil {
		return nil, apierr.Status(err)
	}
	list, err := s.namespaces(ctx, req.GetParent(), depth)
	if err != nil {
		return nil, apierr.Status(err)
	}
	return &chunkbridgev1.ListNamespacesResponse{Namespaces: list}, nil
}

// CreateNamespace creates a namespace and its missing parents.
func (s *Server) CreateNamespace(ctx context.Context, req *chunkbridgev1.CreateNamespaceRequest) (*chunkbridgev1.CreateNamespaceResponse, error) {
	if err := auth.Check(ctx, auth.Append, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	ns := req.GetNamespace()
	if err := CheckNamespace(ns); err != nil {
		return nil, apierr.Status(err)
	}
	if ns == "" {
		return nil, apierr.Status(fmt.Errorf("namespace \"\" (the root): %w", apierr.ErrExists))
	}
	parts := strings.Split(ns, "/")
	meta := storage.Metadata{metaCreated: time.Now().UTC().Format(time.RFC3339Nano)}
	for i := range parts {
		created, err := s.view(ctx).PutIfAbsent(ctx, nsMarkerKey(strings.Join(parts[:i+1], "/")), strings.NewReader(""), 0, meta)
		if err != nil {
			return nil, apierr.Status(fmt.Errorf("create namespace %q: %w", ns, err))
		}
		if !created && i == len(parts)-1 {
			return nil, apierr.Status(fmt.Errorf("namespace %q: %w", ns, apierr.ErrExists))
		}
	}
	return &chunkbridgev1.CreateNamespaceResponse{}, nil
}

// DeleteNamespace removes a namespace, those below it and, with
// delete_groups, their snapshots. Markers go last, deepest first, so that
// a delete cut short leaves namespaces that still exist, never snapshots
// in a namespace that does not.
func (s *Server) DeleteNamespace(ctx context.Context, req *chunkbridgev1.DeleteNamespaceRequest) (*chunkbridgev1.DeleteNamespaceResponse, error) {
	if err := auth.Check(ctx, auth.Replace, "snapshots"); err != nil {
		return nil, apierr.Status(err)
	}
	ns := req.GetNamespace()
	if ns == "" {
		return nil, apierr.Status(fmt.Errorf("%w: the root namespace cannot be deleted", apierr.ErrInvalid))
	}
	if err := s.namespaceExists(ctx, ns); err != nil {
		return nil, apierr.Status(err)
	}
	var markers, files []string
	// Without delete-groups the first file found refuses the delete: the
	// listing stops there rather than gathering the namespace's files.
	errNotEmpty := errors.New("not empty")
	err := s.view(ctx).List(ctx, snapshotPrefix+nsDir(ns), func(i storage.Info) error {
		if strings.HasSuffix(i.Key, "/"+namespaceMarker) {
			markers = append(markers, i.Key)
			return nil
		}
		files = append(files, i.Key)
		if !req.GetDeleteGroups() {
			return errNotEmpty
		}
		return nil
	})
	if errors.Is(err, errNotEmpty) {
		return nil, apierr.Status(fmt.Errorf("%w: namespace %q is not empty (it or a namespace below it holds snapshot files, e.g. %s): delete its snapshots first, or ask for delete-groups",
			apierr.ErrFailedPrecondition, ns, strings.TrimPrefix(files[0], snapshotPrefix)))
	}
	if err != nil {
		return nil, apierr.Status(fmt.Errorf("delete namespace %q: %w", ns, err))
	}
	// Manifests first, as DeleteSnapshot does.
	sort.SliceStable(files, func(i, j int) bool {
		return strings.HasSuffix(files[i], "/index.json.blob") && !strings.HasSuffix(files[j], "/index.json.blob")
	})
	// Deepest marker first: a child never outlives its parent.
	sort.SliceStable(markers, func(i, j int) bool { return strings.Count(markers[i], "/") > strings.Count(markers[j], "/") })
	for _, k := range append(files, markers...) {
		if err := s.view(ctx).Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return nil, apierr.Status(fmt.Errorf("delete namespace %q: %s: %w", ns, k, err))
		}
	}
	return &chunkbridgev1.DeleteNamespaceResponse{}, nil
}

// NamespaceDir is where namespace ns's snapshots are, relative to
// snapshots/ ("ns/a/ns/b/" for a/b, "" for the root): snapshot file paths
// the catalog takes and returns start with it.
func NamespaceDir(ns string) string { return nsDir(ns) }
