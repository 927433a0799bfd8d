package pbs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
)

// snapshot names one snapshot of the caller's tenant, in namespace ns
// ("a/b"; "" is the root).
type snapshot struct {
	ns, typ, id string
	time        time.Time
}

// dir is the snapshot's path as the catalog spells it.
func (s snapshot) dir() string {
	return catalog.NamespaceDir(s.ns) + s.typ + "/" + s.id + "/" + s.time.UTC().Format(time.RFC3339)
}

// snapshotOf is the catalog's snapshot sn, as the gateway names it.
func snapshotOf(sn *chunkbridgev1.Snapshot) snapshot {
	return snapshot{ns: sn.GetNamespace(), typ: sn.GetType(), id: sn.GetBackupId(), time: sn.GetTime().AsTime()}
}

var backupIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$`)

// storeOK checks the datastore a request names: the caller's tenant, the
// only one it has. Another answers as a datastore nobody has, so that it
// reveals nothing.
func storeOK(store string, p auth.Principal) error {
	if store != p.Tenant {
		return fmt.Errorf("%w: no such datastore %q", apierr.ErrNotFound, store)
	}
	return nil
}

// nsOK checks a namespace's spelling ("a/b", at most 7 levels); whether it
// exists is the catalog's to say.
func nsOK(ns string) error {
	return catalog.CheckNamespace(ns)
}

// snapshotParams reads store, ns, backup-type, backup-id and backup-time.
func (s *Server) snapshotParams(q url.Values, p auth.Principal) (snapshot, int, error) {
	if err := storeOK(q.Get("store"), p); err != nil {
		return snapshot{}, http.StatusNotFound, err
	}
	if err := nsOK(q.Get("ns")); err != nil {
		return snapshot{}, http.StatusBadRequest, err
	}
	snap, err := parseSnapshot(q.Get("backup-type"), q.Get("backup-id"), q.Get("backup-time"))
	if err != nil {
		return snapshot{}, http.StatusBadRequest, err
	}
	snap.ns = q.Get("ns")
	return snap, 0, nil
}

func parseSnapshot(typ, id, t string) (snapshot, error) {
	switch typ {
	case "vm", "ct", "host":
	default:
		return snapshot{}, fmt.Errorf("%w: backup-type %q: want vm, ct or host", apierr.ErrInvalid, typ)
	}
	if !backupIDRE.MatchString(id) {
		return snapshot{}, fmt.Errorf("%w: backup-id %q: want [A-Za-z0-9][A-Za-z0-9_.-]*", apierr.ErrInvalid, id)
	}
	epoch, err := strconv.ParseInt(t, 10, 64)
	if err != nil || epoch < 0 || epoch > 1<<40 {
		return snapshot{}, fmt.Errorf("%w: backup-time %q: want Unix seconds", apierr.ErrInvalid, t)
	}
	return snapshot{typ: typ, id: id, time: time.Unix(epoch, 0).UTC()}, nil
}

// maxParamBody bounds a JSON parameter body (an append of digests and
// offsets is the largest: 128 of each from the Go client, a few thousand
// from others).
const maxParamBody = 4 << 20

// params merges the query string and a JSON object body: clients use
// either (docs/pbs.md, "Backup protocol"). Values are kept as JSON for the caller to decode.
type params map[string]json.RawMessage

func readParams(r *http.Request) (params, error) {
	ps := params{}
	for k, v := range r.URL.Query() {
		if len(v) > 0 {
			b, _ := json.Marshal(v[0])
			ps[k] = b
		}
	}
	if r.Body == nil {
		return ps, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxParamBody+1))
	if err != nil {
		return nil, fmt.Errorf("reading the request: %w", err)
	}
	if len(body) > maxParamBody {
		return nil, fmt.Errorf("%w: parameters larger than %d bytes", apierr.ErrInvalid, maxParamBody)
	}
	if len(body) == 0 {
		return ps, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("%w: the body is not a JSON object of parameters: %v", apierr.ErrInvalid, err)
	}
	for k, v := range obj {
		ps[k] = v
	}
	return ps, nil
}

// str reads a string parameter (a JSON string, or a number spelled as one).
func (ps params) str(name string) (string, bool) {
	raw, ok := ps[name]
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, true
	}
	return string(raw), true
}

// int reads an integer parameter given as a number or a string.
func (ps params) int(name string) (int64, error) {
	s, ok := ps.str(name)
	if !ok {
		return 0, fmt.Errorf("%w: parameter %s is missing", apierr.ErrInvalid, name)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: parameter %s = %q: want an integer", apierr.ErrInvalid, name, s)
	}
	return n, nil
}

// list reads a JSON array parameter.
func (ps params) list(name string, into any) error {
	raw, ok := ps[name]
	if !ok {
		return fmt.Errorf("%w: parameter %s is missing", apierr.ErrInvalid, name)
	}
	if err := json.Unmarshal(raw, into); err != nil {
		return fmt.Errorf("%w: parameter %s: %v", apierr.ErrInvalid, name, err)
	}
	return nil
}

// statusOf maps an error onto an HTTP status: 4xx for what the client can
// fix.
func statusOf(err error) int {
	switch {
	case errors.Is(err, apierr.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, apierr.ErrPermission), errors.Is(err, apierr.ErrUnauthenticated):
		return http.StatusForbidden
	case errors.Is(err, apierr.ErrExists):
		return http.StatusConflict
	case errors.Is(err, apierr.ErrQuota):
		return http.StatusInsufficientStorage
	case errors.Is(err, apierr.ErrInvalid), errors.Is(err, apierr.ErrFailedPrecondition), errors.Is(err, apierr.ErrDataLoss):
		return http.StatusBadRequest
	case errors.Is(err, apierr.ErrBusy), errors.Is(err, apierr.ErrExhausted), errors.Is(err, apierr.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// reply writes {"data": v}.
func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"data": v})
}

// replyErr writes err with its status; PBS clients print the body.
func replyErr(w http.ResponseWriter, err error) {
	http.Error(w, err.Error(), statusOf(err))
}
