package pbs

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
)

// The management routes over plain HTTPS (docs/pbs.md, "Management routes"): version, the
// datastore list (the caller's tenant), groups, snapshots and snapshot
// delete. Only snapshots with a manifest exist for PBS clients.

func (s *Server) managementHandler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /api2/json/version", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string]string{"version": "3.2", "release": "0", "repoid": "chunkbridge"})
	})
	m.HandleFunc("GET /api2/json/admin/datastore", func(w http.ResponseWriter, r *http.Request) {
		p := auth.FromContext(r.Context())
		reply(w, []map[string]string{{"store": p.Tenant, "comment": "chunkbridge tenant " + p.Tenant}})
	})
	m.HandleFunc("GET /api2/json/admin/datastore/{store}/groups", s.groups)
	m.HandleFunc("GET /api2/json/admin/datastore/{store}/snapshots", s.listSnapshots)
	m.HandleFunc("DELETE /api2/json/admin/datastore/{store}/snapshots", s.deleteSnapshot)
	m.HandleFunc("POST /api2/json/admin/datastore/{store}/prune", s.prune)
	m.HandleFunc("GET /api2/json/admin/datastore/{store}/status", s.datastoreStatus)
	m.HandleFunc("GET /api2/json/admin/datastore/{store}/namespace", s.listNamespaces)
	m.HandleFunc("POST /api2/json/admin/datastore/{store}/namespace", s.createNamespace)
	m.HandleFunc("DELETE /api2/json/admin/datastore/{store}/namespace", s.deleteNamespace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = cleanPath(r.URL.Path)
		if r.Method == http.MethodPost && r.URL.Path == "/api2/json/access/ticket" {
			s.login(w, r)
			return
		}
		p, err := s.authenticateRequest(r, r.Method != http.MethodGet && r.Method != http.MethodHead)
		if err != nil {
			s.audit(auth.Principal{}, r.RemoteAddr, r.Method+" "+r.URL.Path, err)
			http.Error(w, "authentication failed: "+err.Error(), http.StatusUnauthorized)
			return
		}
		m.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), p)))
	})
}

// visible lists the caller's snapshots that have a manifest.
func (s *Server) visible(w http.ResponseWriter, r *http.Request) ([]*chunkbridgev1.Snapshot, bool) {
	p := auth.FromContext(r.Context())
	q := r.URL.Query()
	err := storeOK(r.PathValue("store"), p)
	if err == nil {
		err = nsOK(q.Get("ns"))
	}
	var snaps []*chunkbridgev1.Snapshot
	if err == nil {
		snaps, err = s.Catalog.ListSnapshots(r.Context(), q.Get("ns"), q.Get("backup-type"), q.Get("backup-id"))
	}
	if err != nil {
		s.refuse(w, r, err)
		return nil, false
	}
	out := snaps[:0]
	for _, sn := range snaps {
		if hasManifest(sn) {
			out = append(out, sn)
		}
	}
	return out, true
}

// refuse answers a management request's error, auditing a refusal.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	if st := statusOf(err); st == http.StatusForbidden || st == http.StatusNotFound {
		s.audit(auth.FromContext(r.Context()), r.RemoteAddr, r.Method+" "+r.URL.Path, err)
	}
	replyErr(w, err)
}

type fileInfo struct {
	Filename  string `json:"filename"`
	Size      int64  `json:"size"`
	CryptMode string `json:"crypt-mode"`
}

func files(sn *chunkbridgev1.Snapshot) ([]fileInfo, int64) {
	var out []fileInfo
	var total int64
	for _, f := range sn.GetFiles() {
		mode := "none"
		if f.GetEncrypted() {
			mode = "encrypt"
		}
		out = append(out, fileInfo{f.GetName(), f.GetContentSize(), mode})
		total += f.GetContentSize()
	}
	for _, b := range sn.GetBlobs() {
		out = append(out, fileInfo{b.GetName(), b.GetSize(), "none"})
		total += b.GetSize()
	}
	return out, total
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	snaps, ok := s.visible(w, r)
	if !ok {
		return
	}
	owner := auth.FromContext(r.Context()).Name
	out := []map[string]any{}
	for _, sn := range snaps {
		fs, size := files(sn)
		out = append(out, map[string]any{
			"backup-type": sn.GetType(), "backup-id": sn.GetBackupId(), "backup-time": sn.GetTime().AsTime().Unix(),
			"files": fs, "size": size, "owner": owner, "protected": false,
		})
	}
	reply(w, out)
}

func (s *Server) groups(w http.ResponseWriter, r *http.Request) {
	snaps, ok := s.visible(w, r)
	if !ok {
		return
	}
	owner := auth.FromContext(r.Context()).Name
	type group struct {
		typ, id string
		last    int64
		count   int
		files   []string
	}
	byKey := map[string]*group{}
	var keys []string
	for _, sn := range snaps {
		k := sn.GetType() + "/" + sn.GetBackupId()
		g := byKey[k]
		if g == nil {
			g = &group{typ: sn.GetType(), id: sn.GetBackupId()}
			byKey[k] = g
			keys = append(keys, k)
		}
		g.count++
		if t := sn.GetTime().AsTime().Unix(); t > g.last {
			g.last = t
			fs, _ := files(sn)
			g.files = g.files[:0]
			for _, f := range fs {
				g.files = append(g.files, f.Filename)
			}
		}
	}
	sort.Strings(keys)
	out := []map[string]any{}
	for _, k := range keys {
		g := byKey[k]
		out = append(out, map[string]any{"backup-type": g.typ, "backup-id": g.id, "last-backup": g.last, "backup-count": g.count, "files": g.files, "owner": owner})
	}
	reply(w, out)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	p := auth.FromContext(r.Context())
	q := r.URL.Query()
	err := storeOK(r.PathValue("store"), p)
	if err == nil {
		err = nsOK(q.Get("ns"))
	}
	if err == nil {
		// The catalog checks it too; refused here first, before anything.
		err = auth.Check(r.Context(), auth.Replace, "snapshots")
	}
	var snap snapshot
	if err == nil {
		snap, err = parseSnapshot(q.Get("backup-type"), q.Get("backup-id"), q.Get("backup-time"))
	}
	if err == nil {
		err = s.Catalog.DeleteSnapshot(r.Context(), q.Get("ns"), snap.typ, snap.id, snap.time.UTC().Format("2006-01-02T15:04:05Z"))
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	reply(w, nil)
}

// prune applies PBS's keep-* options to one backup group's snapshots (those
// with a manifest) and deletes the others as the caller: a write principal
// may, an append or read one only asks for a dry run.
func (s *Server) prune(w http.ResponseWriter, r *http.Request) {
	p := auth.FromContext(r.Context())
	ps, err := readParams(r)
	if err == nil {
		err = storeOK(r.PathValue("store"), p)
	}
	ns, _ := ps.str("ns")
	if err == nil {
		err = nsOK(ns)
	}
	typ, _ := ps.str("backup-type")
	id, _ := ps.str("backup-id")
	if err == nil {
		_, err = parseSnapshot(typ, id, "0")
	}
	var pol admin.Policy
	for _, k := range []struct {
		name string
		into *int
	}{{"keep-last", &pol.Last}, {"keep-hourly", &pol.Hourly}, {"keep-daily", &pol.Daily}, {"keep-weekly", &pol.Weekly}, {"keep-monthly", &pol.Monthly}, {"keep-yearly", &pol.Yearly}} {
		if _, ok := ps[k.name]; !ok || err != nil {
			continue
		}
		n, perr := ps.int(k.name)
		if perr != nil || n < 0 || n > 1<<20 {
			err = fmt.Errorf("%w: %s: want a count", apierr.ErrInvalid, k.name)
		}
		*k.into = int(n)
	}
	dry, _ := ps.str("dry-run")
	dryRun := dry == "true" || dry == "1"
	if err == nil && !dryRun {
		err = auth.Check(r.Context(), auth.Replace, "snapshots")
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	q := r.URL.Query()
	q.Set("backup-type", typ)
	q.Set("backup-id", id)
	q.Set("ns", ns)
	r.URL.RawQuery = q.Encode()
	snaps, ok := s.visible(w, r)
	if !ok {
		return
	}
	times := make([]time.Time, len(snaps))
	for i, sn := range snaps {
		times[i] = sn.GetTime().AsTime()
	}
	keep, _ := pol.Decide(times)
	out := []map[string]any{}
	for i, sn := range snaps {
		if !keep[i] && !dryRun {
			err := s.Catalog.DeleteSnapshot(r.Context(), ns, sn.GetType(), sn.GetBackupId(), times[i].UTC().Format("2006-01-02T15:04:05Z"))
			if err != nil && !errors.Is(err, apierr.ErrNotFound) {
				s.refuse(w, r, fmt.Errorf("prune: deleting %s/%s/%d: %w", sn.GetType(), sn.GetBackupId(), times[i].Unix(), err))
				return
			}
		}
		out = append(out, map[string]any{"backup-type": sn.GetType(), "backup-id": sn.GetBackupId(), "backup-time": times[i].Unix(), "keep": keep[i], "protected": false})
	}
	reply(w, out)
}

// listNamespaces answers PBS's namespace list: parent (the root by
// default) itself first, then those below it down to max-depth levels,
// as [{"ns": "a/b"}, …].
func (s *Server) listNamespaces(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	err := storeOK(r.PathValue("store"), auth.FromContext(r.Context()))
	parent := q.Get("parent")
	if err == nil {
		err = nsOK(parent)
	}
	depth := -1
	if v := q.Get("max-depth"); v != "" && err == nil {
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 0 || n > catalog.MaxNamespaceDepth {
			err = fmt.Errorf("%w: max-depth %q: want 0 to %d", apierr.ErrInvalid, v, catalog.MaxNamespaceDepth)
		}
		depth = n
	}
	var list []string
	if err == nil {
		list, err = s.Catalog.ListNamespaces(r.Context(), parent, depth)
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	out := make([]map[string]string, len(list))
	for i, ns := range list {
		out[i] = map[string]string{"ns": ns}
	}
	reply(w, out)
}

// createNamespace creates parent/name (PBS's parameters) and answers the
// new namespace's name.
func (s *Server) createNamespace(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err == nil {
		err = storeOK(r.PathValue("store"), auth.FromContext(r.Context()))
	}
	parent, _ := ps.str("parent")
	name, _ := ps.str("name")
	ns := name
	if parent != "" {
		ns = parent + "/" + name
	}
	if err == nil && (name == "" || strings.Contains(name, "/")) {
		err = fmt.Errorf("%w: name %q: want one namespace component (parent holds the rest)", apierr.ErrInvalid, name)
	}
	if err == nil {
		err = nsOK(ns)
	}
	if err == nil {
		// The catalog checks it too; refused here first, before anything.
		err = auth.Check(r.Context(), auth.Append, "snapshots")
	}
	if err == nil {
		err = s.Catalog.CreateNamespace(r.Context(), ns)
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	reply(w, ns)
}

// deleteNamespace removes ns; delete-groups also removes its snapshots,
// as with PBS (otherwise a namespace holding any is refused).
func (s *Server) deleteNamespace(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err == nil {
		err = storeOK(r.PathValue("store"), auth.FromContext(r.Context()))
	}
	ns, _ := ps.str("ns")
	if err == nil {
		err = nsOK(ns)
	}
	del, _ := ps.str("delete-groups")
	if err == nil {
		err = auth.Check(r.Context(), auth.Replace, "snapshots")
	}
	if err == nil {
		err = s.Catalog.DeleteNamespace(r.Context(), ns, del == "true" || del == "1")
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	reply(w, nil)
}
