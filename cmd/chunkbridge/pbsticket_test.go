package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/auth"
)

// --pbs-ticket-key-file: PBS gateways in front of one chunk service with
// the same key file accept each other's tickets; one with another key
// refuses them; without the flag the gateway says its tickets are per
// process; a short key file stops serve at start.
func TestPBSTicketKeyFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	cert, key := selfSigned(t)
	tok, hash := auth.NewToken()
	dir := t.TempDir()
	creds := filepath.Join(dir, "credentials.yaml")
	os.WriteFile(creds, []byte(fmt.Sprintf("principals:\n  - name: 'reader@pbs!r'\n    role: read\n    token_sha256: %s\n", hash)), 0o600)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("gateway-token-of-the-pbs-ticket-test\n"), 0o600)
	keyFile := func(name string, n int) string {
		k := make([]byte, n)
		rand.Read(k)
		p := filepath.Join(dir, name)
		os.WriteFile(p, k, 0o600)
		return p
	}
	shared, other, short := keyFile("shared", 32), keyFile("other", 64), keyFile("short", 31)

	svc := start(t, nil, "serve", "chunk", "--store", t.TempDir(), "--auth-token-file", tokenFile, "--credentials-file", creds)
	gateway := func(extra ...string) []string {
		return append([]string{"serve", "pbs-gateway", "--chunk-service", svc.grpc, "--auth-token-file", tokenFile, "--credentials-file", creds,
			"--pbs-listen", "127.0.0.1:0", "--pbs-tls-cert", cert, "--pbs-tls-key", key}, extra...)
	}
	issuer := start(t, nil, gateway("--pbs-ticket-key-file", shared)...)
	replica := start(t, nil, gateway("--pbs-ticket-key-file", shared)...)
	stranger := start(t, nil, gateway("--pbs-ticket-key-file", other)...)
	perProcess := start(t, nil, gateway()...)
	if !perProcess.waitLog("tickets are signed with a key made at start") || strings.Contains(issuer.logs(), "key made at start") {
		t.Fatalf("the per-process key is not said, or said with a key file:\n%s\n%s", perProcess.logs(), issuer.logs())
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Post("https://"+issuer.pbs+"/api2/json/access/ticket", "application/json", strings.NewReader(`{"username":"reader@pbs!r","password":"`+tok+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	var login struct{ Data struct{ Ticket string } }
	json.NewDecoder(resp.Body).Decode(&login)
	resp.Body.Close()
	if resp.StatusCode != 200 || login.Data.Ticket == "" {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	for _, c := range []struct {
		name string
		gw   *process
		want int
	}{{"the issuer", issuer, 200}, {"a replica with the same key file", replica, 200}, {"a gateway with another key", stranger, 401}, {"a gateway with a key made at start", perProcess, 401}} {
		req, _ := http.NewRequest("GET", "https://"+c.gw.pbs+"/api2/json/admin/datastore/default/groups", nil)
		req.AddCookie(&http.Cookie{Name: "PBSAuthCookie", Value: login.Data.Ticket})
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}

	cmd := exec.Command(binary, gateway("--pbs-ticket-key-file", short, "--http-listen", "127.0.0.1:0")...)
	cmd.Dir = t.TempDir()
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "31 bytes, want at least 32") {
		t.Fatalf("a short key file: %v %s", err, out)
	}
}
