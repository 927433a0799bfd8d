package pbs

import (
	"net/http"
	"sort"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
)

// The management routes over plain HTTPS (reference §7): version, the
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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = cleanPath(r.URL.Path)
		p, err := s.authenticate(r.Header.Get("Authorization"))
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
		snaps, err = s.Catalog.ListSnapshots(r.Context(), q.Get("backup-type"), q.Get("backup-id"))
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
		out = append(out, fileInfo{f.GetName(), f.GetContentSize(), "none"})
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
		err = s.Catalog.DeleteSnapshot(r.Context(), snap.typ, snap.id, snap.time.UTC().Format("2006-01-02T15:04:05Z"))
	}
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	reply(w, nil)
}
