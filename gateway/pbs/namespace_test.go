package pbs_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	chunkclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
	"github.com/chunkbridge/chunkbridge/storage"
)

const (
	acmeWriter   = "PBSAPIToken=w@pbs!acme:s1"
	acmeAppend   = "PBSAPIToken=b@pbs!acme:s2"
	globexWriter = "PBSAPIToken=w@pbs!globex:s3"
)

func newNSHarness(t *testing.T) *harness {
	return newHarnessWith(t, func(s *pbs.Server) {
		s.Authenticate = func(name, secret string) (auth.Principal, error) {
			switch name + ":" + secret {
			case "w@pbs!acme:s1":
				return auth.Principal{Name: name, Tenant: "acme", Role: auth.RoleWrite}, nil
			case "b@pbs!acme:s2":
				return auth.Principal{Name: name, Tenant: "acme", Role: auth.RoleAppend}, nil
			case "w@pbs!globex:s3":
				return auth.Principal{Name: name, Tenant: "globex", Role: auth.RoleWrite}, nil
			}
			return auth.Principal{}, auth.ErrUnknownCredential
		}
	})
}

// call sends a management request with a token and returns its status
// and body.
func (h *harness) call(t *testing.T, method, path, token, body string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest(method, "https://"+h.addr+path, strings.NewReader(body))
	req.Header.Set("Authorization", token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func nsQuery(store, ns string, epoch int64) url.Values {
	q := pbstest.Query(store, "host", "web1", epoch)
	if ns != "" {
		q.Set("ns", ns)
	}
	return q
}

// nsBackup backs chunks up as host/web1 at epoch in ns of acme, with the
// previous snapshot's chunks known; it returns the uploads made.
func nsBackup(t *testing.T, h *harness, ns string, epoch int64, chunks [][]byte) int {
	t.Helper()
	s, err := pbstest.Open(t, h.addr, "/api2/json/backup", pbs.BackupProtocol, acmeWriter, nsQuery("acme", ns, epoch))
	if err != nil {
		t.Fatal(err)
	}
	return incremental(t, s, epoch, chunks)
}

func namespacesOf(t *testing.T, body string) []string {
	t.Helper()
	var out struct {
		Data []struct {
			NS *string `json:"ns"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	var list []string
	for _, d := range out.Data {
		if d.NS == nil {
			t.Fatalf("an item without ns: %s", body)
		}
		list = append(list, *d.NS)
	}
	return list
}

func countOf(t *testing.T, body string) int {
	t.Helper()
	var out struct{ Data []json.RawMessage }
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return len(out.Data)
}

// TestNamespaces drives PBS namespaces through the gateway: a missing
// namespace refuses a backup and stores nothing, bad names and depth 8
// get 400, a backup into a/b is incremental against a/b's previous
// snapshot and restores through the reader, listings and prune keep
// namespaces apart, a non-empty namespace is deleted only with
// delete-groups, and another tenant sees none of it.
func TestNamespaces(t *testing.T) {
	h := newNSHarness(t)
	t1 := time.Now().Add(-time.Hour).Unix()
	first := makeChunks(1, 6, 64<<10)
	second := append([][]byte{}, first...)
	second[2] = bytes.Repeat([]byte{7}, 40<<10)

	// A missing namespace: refused as PBS does, nothing stored.
	if _, err := pbstest.Open(t, h.addr, "/api2/json/backup", pbs.BackupProtocol, acmeWriter, nsQuery("acme", "a/b", t1)); err == nil || !strings.HasPrefix(err.Error(), "404") || !strings.Contains(err.Error(), "namespace not found") {
		t.Fatalf("backup into a missing namespace: %v", err)
	}
	// Bad names and depth 8: 400, for upgrades and management alike.
	for _, bad := range []string{"a//b", "a/", ".a", "a b", "1/2/3/4/5/6/7/8"} {
		if _, err := pbstest.Open(t, h.addr, "/api2/json/backup", pbs.BackupProtocol, acmeWriter, nsQuery("acme", bad, t1)); err == nil || !strings.HasPrefix(err.Error(), "400") {
			t.Fatalf("backup into %q: %v", bad, err)
		}
		if st, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/snapshots?ns="+url.QueryEscape(bad), acmeWriter, ""); st != http.StatusBadRequest {
			t.Fatalf("snapshots of %q: %d %s", bad, st, body)
		}
	}
	if st, body := h.call(t, "POST", "/api2/json/admin/datastore/acme/namespace", acmeWriter, `{"parent":"1/2/3/4/5/6/7","name":"8"}`); st != http.StatusBadRequest {
		t.Fatalf("create at depth 8: %d %s", st, body)
	}
	// (This harness reaches the catalog without forwarding the caller,
	// so files land in the default tenant's space; cmd/chunkbridge's
	// TestPBSGateway and services/admin's TestNamespacesPerTenant check
	// tenants.)
	var keys []string
	h.store.List(t.Context(), "snapshots/", func(i storage.Info) error { keys = append(keys, i.Key); return nil })
	if len(keys) != 0 {
		t.Fatalf("refused requests stored %v", keys)
	}

	// Create a, then a/b (PBS's parent and name); an append token may.
	if st, body := h.call(t, "POST", "/api2/json/admin/datastore/acme/namespace", acmeAppend, `{"name":"a"}`); st != 200 || !strings.Contains(body, `"data":"a"`) {
		t.Fatalf("create a: %d %s", st, body)
	}
	if st, body := h.call(t, "POST", "/api2/json/admin/datastore/acme/namespace?parent=a&name=b", acmeWriter, ""); st != 200 || !strings.Contains(body, `"data":"a/b"`) {
		t.Fatalf("create a/b: %d %s", st, body)
	}
	if st, _ := h.call(t, "POST", "/api2/json/admin/datastore/acme/namespace", acmeWriter, `{"name":"a"}`); st != http.StatusConflict {
		t.Fatalf("create a again: %d", st)
	}

	// The same group in the root and in a/b, two snapshots each; the
	// second a/b backup knows the first's chunks.
	for _, ns := range []string{"", "a/b"} {
		if n := nsBackup(t, h, ns, t1, first); n != 6 {
			t.Fatalf("first backup in %q uploaded %d", ns, n)
		}
		if n := nsBackup(t, h, ns, t1+60, second); n != 1 {
			t.Fatalf("incremental backup in %q uploaded %d, want 1", ns, n)
		}
	}
	if _, err := h.store.Stat(t.Context(), "snapshots/ns/a/ns/b/host/web1/"+time.Unix(t1, 0).UTC().Format(time.RFC3339)+"/root.pxar.didx"); err != nil {
		t.Fatalf("the namespaced snapshot's file: %v", err)
	}
	r, err := pbstest.Open(t, h.addr, "//api2/json/reader", pbs.ReaderProtocol, acmeWriter, nsQuery("acme", "a/b", t1+60))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Restore("root.pxar.didx"), bytes.Join(second, nil)) {
		t.Fatal("restored data from a/b differs")
	}

	// casync's HTTP store reads the namespaced file as a blob index.
	cs := httptest.NewServer(&casync.HTTPStore{Chunks: chunkclient.NewLocal(h.svcs.Chunks, 0), Catalog: chunkclient.NewCatalogGRPC(h.svcs.Conn)})
	defer cs.Close()
	dir := time.Unix(t1+60, 0).UTC().Format(time.RFC3339)
	for _, name := range []string{dir, "latest"} {
		resp, err := http.Get(cs.URL + "/indexes/snapshots/ns/a/ns/b/host/web1/" + name + "/root.pxar.caibx")
		if err != nil {
			t.Fatal(err)
		}
		idx, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(idx, sha256Of(second[2])) {
			t.Fatalf("casync GET of a/b's %s index: %d (%d bytes)", name, resp.StatusCode, len(idx))
		}
	}

	// Listings.
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"", "a", "a/b"}},
		{"?max-depth=1", []string{"", "a"}},
		{"?max-depth=0", []string{""}},
		{"?parent=a", []string{"a", "a/b"}},
	} {
		st, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/namespace"+tc.query, acmeWriter, "")
		if got := namespacesOf(t, body); st != 200 || !slices.Equal(got, tc.want) {
			t.Fatalf("namespaces%s: %d %v, want %v", tc.query, st, got, tc.want)
		}
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"snapshots", 2}, {"snapshots?ns=a", 0}, {"snapshots?ns=a%2Fb", 2}, {"groups?ns=a/b", 1}, {"groups", 1},
	} {
		st, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/"+tc.path, acmeWriter, "")
		if st != 200 || countOf(t, body) != tc.want {
			t.Fatalf("%s: %d %s, want %d items", tc.path, st, body, tc.want)
		}
	}
	if st, _ := h.call(t, "GET", "/api2/json/admin/datastore/acme/snapshots?ns=nope", acmeWriter, ""); st != http.StatusNotFound {
		t.Fatalf("snapshots of a missing namespace: %d", st)
	}

	// Prune a/b to one snapshot: the root's group keeps both.
	if st, body := h.call(t, "POST", "/api2/json/admin/datastore/acme/prune", acmeWriter, `{"ns":"a/b","backup-type":"host","backup-id":"web1","keep-last":1}`); st != 200 || countOf(t, body) != 2 {
		t.Fatalf("prune a/b: %d %s", st, body)
	}
	for path, want := range map[string]int{"snapshots": 2, "snapshots?ns=a/b": 1} {
		if _, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/"+path, acmeWriter, ""); countOf(t, body) != want {
			t.Fatalf("after prune of a/b, %s: %s", path, body)
		}
	}

	// A snapshot delete names its namespace.
	nsBackup(t, h, "a", t1, first[:1])
	del := func(ns string) int {
		st, _ := h.call(t, "DELETE", fmt.Sprintf("/api2/json/admin/datastore/acme/snapshots?ns=%s&backup-type=host&backup-id=web1&backup-time=%d", ns, t1), acmeWriter, "")
		return st
	}
	if st := del("a/b"); st != http.StatusNotFound { // pruned already
		t.Fatalf("delete of a pruned snapshot in a/b: %d", st)
	}
	if st := del("a"); st != 200 {
		t.Fatalf("delete in a: %d", st)
	}
	for path, want := range map[string]int{"snapshots": 2, "snapshots?ns=a": 0, "snapshots?ns=a/b": 1} {
		if _, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/"+path, acmeWriter, ""); countOf(t, body) != want {
			t.Fatalf("after delete in a, %s: %s", path, body)
		}
	}

	// Another tenant cannot name acme's datastore.
	for _, m := range []string{"GET", "POST", "DELETE"} {
		if st, _ := h.call(t, m, "/api2/json/admin/datastore/acme/namespace?ns=a&name=z", globexWriter, ""); st != http.StatusNotFound {
			t.Fatalf("globex %s on acme's namespaces: %d", m, st)
		}
	}

	// Delete: an append token may not; a non-empty namespace needs
	// delete-groups; the root's snapshots stay.
	if st, _ := h.call(t, "DELETE", "/api2/json/admin/datastore/acme/namespace?ns=a&delete-groups=1", acmeAppend, ""); st != http.StatusForbidden {
		t.Fatalf("append deleting a namespace: %d", st)
	}
	if st, body := h.call(t, "DELETE", "/api2/json/admin/datastore/acme/namespace?ns=a", acmeWriter, ""); st != http.StatusBadRequest || !strings.Contains(body, "not empty") {
		t.Fatalf("delete of non-empty a: %d %s", st, body)
	}
	if st, body := h.call(t, "DELETE", "/api2/json/admin/datastore/acme/namespace?ns=a&delete-groups=true", acmeWriter, ""); st != 200 {
		t.Fatalf("delete of a with its groups: %d %s", st, body)
	}
	if _, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/namespace", acmeWriter, ""); !slices.Equal(namespacesOf(t, body), []string{""}) {
		t.Fatalf("namespaces after delete: %s", body)
	}
	if _, body := h.call(t, "GET", "/api2/json/admin/datastore/acme/snapshots", acmeWriter, ""); countOf(t, body) != 2 {
		t.Fatalf("root snapshots after deleting a: %s", body)
	}
}

func sha256Of(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}
