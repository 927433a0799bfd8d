package main

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// The PBS gateway in serve all and as a separate process in front of the
// chunk service: an API token's principal backs up into its tenant (the
// datastore), the services see it as that principal (forwarded by the
// separate gateway), a read token restores, and the refusals are logged.
func TestPBSGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	cert, key := selfSigned(t)
	backupTok, backupHash := auth.NewToken()
	readTok, readHash := auth.NewToken()
	creds := filepath.Join(t.TempDir(), "credentials.yaml")
	os.WriteFile(creds, []byte(fmt.Sprintf(`
tenants:
  - name: acme
    quota:
      stored_bytes: 1GiB
principals:
  - name: 'backup@pbs!host1'
    tenant: acme
    role: append
    token_sha256: %s
  - name: 'reader@pbs!r'
    tenant: acme
    role: read
    token_sha256: %s
`, backupHash, readHash)), 0o600)
	pbsFlags := []string{"--pbs-listen", "127.0.0.1:0", "--pbs-tls-cert", cert, "--pbs-tls-key", key, "--credentials-file", creds}
	// The datastore status reads the store's count: the quota's first
	// count, before the backup, must not be reused for it.
	fresh := []string{"--stats-ttl", "1ms"}

	run := func(t *testing.T, gw *process, store string) {
		if !gw.waitLog(`"fingerprint":"`) {
			t.Fatalf("no fingerprint in the start log:\n%s", gw.logs())
		}
		chunks := make([][]byte, 5)
		for i := range chunks {
			chunks[i] = make([]byte, 100<<10)
			rand.Read(chunks[i])
		}
		epoch := time.Now().Add(-time.Minute).Unix()
		s, err := pbstest.Open(t, gw.pbs, "//api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=backup@pbs!host1:"+backupTok, pbstest.Query("acme", "host", "web1", epoch))
		if err != nil {
			t.Fatal(err)
		}
		if n := s.Backup("root.pxar.didx", "web1", epoch, chunks, map[string]bool{}, nil); n != 5 {
			t.Fatalf("uploaded %d chunks", n)
		}
		// The read token restores; it may not back up.
		r, err := pbstest.Open(t, gw.pbs, "/api2/json/reader", pbs.ReaderProtocol, "PBSAPIToken reader@pbs!r:"+readTok, pbstest.Query("acme", "host", "web1", epoch))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.Restore("root.pxar.didx"), bytes.Join(chunks, nil)) {
			t.Fatal("restored data differs")
		}
		if _, err := pbstest.Open(t, gw.pbs, "/api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=reader@pbs!r:"+readTok, pbstest.Query("acme", "host", "web1", epoch+1)); err == nil || !strings.HasPrefix(err.Error(), "403") {
			t.Fatalf("a read token backing up: %v", err)
		}
		// The snapshot is the tenant's: another tenant's name is not found,
		// and a wrong secret is refused.
		if _, err := pbstest.Open(t, gw.pbs, "/api2/json/reader", pbs.ReaderProtocol, "PBSAPIToken=reader@pbs!r:"+readTok, pbstest.Query("default", "host", "web1", epoch)); err == nil || !strings.HasPrefix(err.Error(), "404") {
			t.Fatalf("another datastore: %v", err)
		}
		if _, err := pbstest.Open(t, gw.pbs, "/api2/json/reader", pbs.ReaderProtocol, "PBSAPIToken=reader@pbs!r:"+backupTok, pbstest.Query("acme", "host", "web1", epoch)); err == nil || !strings.HasPrefix(err.Error(), "401") {
			t.Fatalf("another principal's secret: %v", err)
		}
		if !gw.waitLog(`"access refused","service":"chunkbridge"`) || !strings.Contains(gw.logs(), `"listener":"pbs"`) {
			t.Fatalf("no audit line:\n%s", gw.logs())
		}
		// A ticket: log in with the principal's name and token, list with
		// the cookie, and a call that changes something needs the CSRF
		// token.
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		body := strings.NewReader(`{"username":"reader@pbs!r","password":"` + readTok + `"}`)
		resp, err := hc.Post("https://"+gw.pbs+"/api2/json/access/ticket", "application/json", body)
		if err != nil {
			t.Fatal(err)
		}
		var login struct {
			Data struct{ Ticket, CSRFPreventionToken, Username string }
		}
		json.NewDecoder(resp.Body).Decode(&login)
		resp.Body.Close()
		if resp.StatusCode != 200 || login.Data.Username != "reader@pbs!r" {
			t.Fatalf("login: %d %+v", resp.StatusCode, login)
		}
		withTicket := func(method, path, csrf string) int {
			req, _ := http.NewRequest(method, "https://"+gw.pbs+path, nil)
			req.AddCookie(&http.Cookie{Name: "PBSAuthCookie", Value: login.Data.Ticket})
			if csrf != "" {
				req.Header.Set("CSRFPreventionToken", csrf)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if st := withTicket("GET", "/api2/json/admin/datastore/acme/groups", ""); st != 200 {
			t.Fatalf("groups with a ticket: %d", st)
		}
		// The datastore status Proxmox VE polls: the tenant's stored bytes
		// against its stored-bytes quota.
		req, _ := http.NewRequest("GET", "https://"+gw.pbs+"/api2/json/admin/datastore/acme/status", nil)
		req.AddCookie(&http.Cookie{Name: "PBSAuthCookie", Value: login.Data.Ticket})
		resp, err = hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var status struct {
			Data struct{ Total, Used, Avail int64 }
		}
		json.NewDecoder(resp.Body).Decode(&status)
		resp.Body.Close()
		if d := status.Data; resp.StatusCode != 200 || d.Total != 1<<30 || d.Used < 5*100<<10 || d.Used > 1<<20 || d.Avail != d.Total-d.Used {
			t.Fatalf("datastore status: %d %+v", resp.StatusCode, d)
		}
		del := fmt.Sprintf("/api2/json/admin/datastore/acme/snapshots?backup-type=host&backup-id=web1&backup-time=%d", epoch)
		if st := withTicket("DELETE", del, ""); st != http.StatusUnauthorized {
			t.Fatalf("a delete without the CSRF token: %d", st)
		}
		if st := withTicket("DELETE", del, login.Data.CSRFPreventionToken); st != http.StatusForbidden {
			t.Fatalf("a read principal deleting: %d", st)
		}
		// A namespace: the append token creates it and backs up into it,
		// the read token lists it and restores from it.
		withToken := func(method, path, tok string) (int, string) {
			req, _ := http.NewRequest(method, "https://"+gw.pbs+path, nil)
			req.Header.Set("Authorization", tok)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		nsQ := pbstest.Query("acme", "host", "web1", epoch)
		nsQ.Set("ns", "prod")
		if _, err := pbstest.Open(t, gw.pbs, "/api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=backup@pbs!host1:"+backupTok, nsQ); err == nil || !strings.HasPrefix(err.Error(), "404") {
			t.Fatalf("a backup into a missing namespace: %v", err)
		}
		if st, body := withToken("POST", "/api2/json/admin/datastore/acme/namespace?name=prod", "PBSAPIToken=backup@pbs!host1:"+backupTok); st != 200 {
			t.Fatalf("create namespace: %d %s", st, body)
		}
		s, err = pbstest.Open(t, gw.pbs, "/api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=backup@pbs!host1:"+backupTok, nsQ)
		if err != nil {
			t.Fatal(err)
		}
		if n := s.Backup("root.pxar.didx", "web1", epoch, chunks[:2], map[string]bool{}, nil); n != 2 {
			t.Fatalf("uploaded %d chunks into prod", n)
		}
		if st, body := withToken("GET", "/api2/json/admin/datastore/acme/namespace", "PBSAPIToken=reader@pbs!r:"+readTok); st != 200 || body != `{"data":[{"ns":""},{"ns":"prod"}]}`+"\n" {
			t.Fatalf("namespaces: %d %q", st, body)
		}
		r, err = pbstest.Open(t, gw.pbs, "/api2/json/reader", pbs.ReaderProtocol, "PBSAPIToken reader@pbs!r:"+readTok, nsQ)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.Restore("root.pxar.didx"), bytes.Join(chunks[:2], nil)) {
			t.Fatal("restored data from prod differs")
		}
		if store == "" {
			return
		}
		// The services stored it as the principal: in its tenant.
		when := time.Unix(epoch, 0).UTC().Format(time.RFC3339)
		for _, dir := range []string{"tenants/acme/snapshots/host/web1", "tenants/acme/snapshots/ns/prod/host/web1"} {
			for _, f := range []string{"root.pxar.didx", "index.json.blob"} {
				if _, err := os.Stat(filepath.Join(store, dir, when, f)); err != nil {
					t.Errorf("not in the tenant's snapshot: %v", err)
				}
			}
		}
	}
	t.Run("serve all", func(t *testing.T) {
		store := t.TempDir()
		run(t, start(t, nil, append(append([]string{"serve", "all", "--store", store}, fresh...), pbsFlags...)...), store)
	})
	t.Run("serve all on MinIO", func(t *testing.T) {
		srv := miniotest.Shared(t)
		run(t, start(t, minioEnv(srv), append(append([]string{"serve", "all", "--store", "s3://" + miniotest.NewBucketName()}, fresh...), pbsFlags...)...), "")
	})
	t.Run("separate gateway", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		os.WriteFile(tokenFile, []byte("gateway-token-of-the-pbs-test\n"), 0o600)
		store := t.TempDir()
		svc := start(t, nil, append([]string{"serve", "chunk", "--store", store, "--auth-token-file", tokenFile, "--credentials-file", creds}, fresh...)...)
		run(t, start(t, nil, append([]string{"serve", "pbs-gateway", "--chunk-service", svc.grpc, "--auth-token-file", tokenFile}, pbsFlags...)...), store)
	})
}
