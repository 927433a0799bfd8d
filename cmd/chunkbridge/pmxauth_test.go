package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/internal/testpki"
)

// pmxEnvRun runs `chunkbridge pmx …` with extra environment variables and
// returns its combined output and error.
func pmxEnvRun(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"pmx"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tlsConn is a gRPC connection to p over TLS, verified with caFile,
// sending token if not empty.
func tlsConn(t *testing.T, p *process, caFile, token string) *grpc.ClientConn {
	t.Helper()
	creds, err := credentials.NewClientTLSFromFile(caFile, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(tokenCreds(token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// PMXBCKUP with access control: the client certificate is the credential.
// Every case is `chunkbridge pmx` against `serve all` with mTLS on the
// PMXBCKUP listener; a refused backup stores nothing.
func TestPMXOverMTLS(t *testing.T) {
	acme := func(cn string) pkix.Name { return pkix.Name{CommonName: cn, Organization: []string{"acme"}} }
	if got := acme("host-append").String(); got != "CN=host-append,O=acme" {
		t.Fatalf("pkix.Name.String() = %q: docs/auth.md's cert_subject example is wrong", got)
	}
	srvCert, srvKey := selfSigned(t)
	ca := testpki.NewCA(t, "chunkbridge test client CA")
	caFile := testpki.WriteFile(t, t.TempDir(), "ca.pem", ca.PEM)
	rogue := testpki.NewCA(t, "another CA")
	client := x509.ExtKeyUsageClientAuth
	appendCert, appendKey := ca.IssueFiles(t, acme("host-append"), client)
	readCert, readKey := ca.IssueFiles(t, acme("host-read"), client)
	strangerCert, strangerKey := ca.IssueFiles(t, acme("stranger"), client)
	// Another CA's certificate with an authorised subject: the subject
	// alone must not be enough.
	rogueCert, rogueKey := rogue.IssueFiles(t, acme("host-append"), client)

	listTok, listHash := auth.NewToken()
	adminTok, adminHash := auth.NewToken()
	creds := filepath.Join(t.TempDir(), "credentials.yaml")
	os.WriteFile(creds, []byte(fmt.Sprintf(`tenants:
  - name: acme
principals:
  - name: host-append
    tenant: acme
    role: append
    cert_subject: CN=host-append,O=acme
  - name: host-read
    tenant: acme
    role: read
    cert_subject: CN=host-read,O=acme
  - name: lister
    tenant: acme
    role: read
    token_sha256: %s
  - name: ops
    role: admin
    token_sha256: %s
`, listHash, adminHash)), 0o600)

	cases := pmxClientCerts{appendCert: appendCert, appendKey: appendKey, readCert: readCert, readKey: readKey,
		refused: []struct{ who, cert, key, want string }{
			{"no certificate", "", "", "no client certificate"},
			{"certificate of another CA", rogueCert, rogueKey, "refused the TLS handshake"},
			{"subject in no cert_subject", strangerCert, strangerKey, `subject "CN=stranger,O=acme" is no principal's cert_subject`},
		}}
	tls := []string{"--credentials-file", creds, "--tls-cert", srvCert, "--tls-key", srvKey}
	t.Run("serve all", func(t *testing.T) {
		p := start(t, nil, append([]string{"serve", "all", "--store", t.TempDir(), "--pmx-tls-client-ca", caFile}, tls...)...)
		pmxMTLSScenario(t, p, p, srvCert, listTok, adminTok, cases)
	})
	// As in Kubernetes: the gateway authenticates the client and calls
	// the chunk service with its own admin token for it (auth.Forward).
	t.Run("separate gateway", func(t *testing.T) {
		tokenFile := filepath.Join(t.TempDir(), "token")
		os.WriteFile(tokenFile, []byte("gateway-token-of-the-pmx-test\n"), 0o600)
		svc := start(t, nil, append([]string{"serve", "chunk", "--store", t.TempDir(), "--auth-token-file", tokenFile}, tls...)...)
		gw := start(t, nil, append([]string{"serve", "pmx-gateway", "--chunk-service", svc.grpc, "--chunk-service-tls", "--chunk-service-ca", srvCert,
			"--auth-token-file", tokenFile, "--tls-client-ca", caFile}, tls...)...)
		pmxMTLSScenario(t, svc, gw, srvCert, "", adminTok, cases)
	})
}

// pmxClientCerts are the client certificates of TestPMXOverMTLS.
type pmxClientCerts struct {
	appendCert, appendKey, readCert, readKey string
	refused                                  []struct{ who, cert, key, want string }
}

// pmxMTLSScenario runs the cases against the PMXBCKUP gateway of gw, whose
// chunk service is svc's; listTok, if not empty, lists through svc's REST.
func pmxMTLSScenario(t *testing.T, svc, gw *process, srvCert, listTok, adminTok string, c pmxClientCerts) {
	waitHealth(t, tlsConn(t, svc, srvCert, ""), healthpb.HealthCheckResponse_SERVING)
	appendCert, appendKey, readCert, readKey := c.appendCert, c.appendKey, c.readCert, c.readKey
	admin := chunkbridgev1.NewAdminServiceClient(tlsConn(t, svc, srvCert, adminTok))
	written := func() int64 {
		t.Helper()
		s, err := admin.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return s.ChunksWritten
	}

	data := randomBytes(77, 3<<20+17)
	p := gw
	input := writeFile(t, data)
	conn := []string{"--server", p.pmx, "--tls-ca", srvCert}
	as := func(cert, key string) []string {
		if cert == "" {
			return conn
		}
		return append(append([]string{}, conn...), "--cert", cert, "--key", key)
	}
	backupArgs := func(id string) []string {
		return []string{"backup", "--type", "host", "--id", id, "--name", "data.bin", input}
	}
	var table []string
	record := func(who, call, result string) {
		table = append(table, fmt.Sprintf("| pmx | %s | %s | %s |", who, call, result))
	}

	// append: backs up, and the backup restores byte-identical.
	out, err := pmxEnvRun(nil, append(backupArgs("mtls"), as(appendCert, appendKey)...)...)
	m := snapshotRE.FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("backup as append: %v\n%s", err, out)
	}
	snap := m[1]
	record("append certificate", "backup", "served: "+snap)
	restoreAs := func(env []string, args ...string) ([]byte, string, error) {
		dst := filepath.Join(t.TempDir(), "restored")
		out, err := pmxEnvRun(env, append([]string{"restore", snap, dst}, args...)...)
		b, _ := os.ReadFile(dst)
		return b, out, err
	}
	if got, out, err := restoreAs(nil, as(appendCert, appendKey)...); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restore as append: %v (identical %v)\n%s", err, bytes.Equal(got, data), out)
	}
	record("append certificate", "restore", "served, byte-identical")

	// read: the backup is refused with the reason and stores nothing; a
	// restore works, here with every flag from the environment.
	before := written()
	out, err = pmxEnvRun(nil, append(backupArgs("mtls-read"), as(readCert, readKey)...)...)
	if err == nil || !strings.Contains(out, "host-read may not add snapshots") || !strings.Contains(out, "role read") {
		t.Fatalf("backup as read: %v, want refused naming the principal and its role:\n%s", err, out)
	}
	record("read certificate", "backup", "refused: "+lastLine(out))
	if n := written() - before; n != 0 {
		t.Fatalf("a refused backup stored %d chunks", n)
	}
	env := []string{"CHUNKBRIDGE_SERVER=" + p.pmx, "CHUNKBRIDGE_TLS_CA=" + srvCert, "CHUNKBRIDGE_CERT=" + readCert, "CHUNKBRIDGE_KEY=" + readKey}
	if got, out, err := restoreAs(env); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restore as read (flags from CHUNKBRIDGE_*): %v (identical %v)\n%s", err, bytes.Equal(got, data), out)
	}
	record("read certificate (CHUNKBRIDGE_CERT/KEY)", "restore", "served, byte-identical")
	if out, err := pmxEnvRun(nil, append([]string{"hashes", snap}, as(readCert, readKey)...)...); err != nil || len(strings.Fields(out)) < 5 {
		t.Fatalf("hashes as read: %v\n%s", err, out)
	}
	record("read certificate", "hashes", "served")

	// Refused connections: before any backup data, with the reason.
	for _, tc := range c.refused {
		before := written()
		out, err := pmxEnvRun(nil, append(backupArgs("mtls-"+strings.Fields(tc.who)[0]), as(tc.cert, tc.key)...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("backup with %s: %v, want refused saying %q:\n%s", tc.who, err, tc.want, out)
		}
		record(tc.who, "backup", "refused: "+lastLine(out))
		if n := written() - before; n != 0 {
			t.Errorf("backup with %s stored %d chunks", tc.who, n)
		}
		got, out, err := restoreAs(nil, as(tc.cert, tc.key)...)
		if err == nil || len(got) != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("restore with %s: %v, %d bytes, want refused saying %q:\n%s", tc.who, err, len(got), tc.want, out)
		}
		record(tc.who, "restore", "refused")
	}

	// pmx list goes through REST: a token, and the CA of the https API.
	api := []string{"list", "--api", "https://" + svc.http, "--tls-ca", srvCert}
	if out, err := pmxEnvRun(nil, api...); err == nil || !strings.Contains(out, "401") || !strings.Contains(out, "CHUNKBRIDGE_TOKEN") {
		t.Errorf("pmx list without a token: %v, want 401 with a hint:\n%s", err, out)
	}
	record("REST, no token", "list", "refused: 401")
	if listTok != "" {
		out, err = pmxEnvRun([]string{"CHUNKBRIDGE_TOKEN=" + listTok}, api...)
		if err != nil || !listed(out, snap) || strings.Contains(out, "mtls-") {
			t.Fatalf("pmx list with a read token: %v, want only %s:\n%s", err, snap, out)
		}
		record("REST, read token (CHUNKBRIDGE_TOKEN)", "list", "served: only the append principal's snapshot")
	}

	// One audit line per refusal, naming the listener and the reason.
	logs := p.logs()
	for _, want := range []string{
		`"listener":"pmx","call":"CreateBackup","principal":"host-read","tenant":"acme"`,
		`"listener":"pmx","call":"connect","principal":"","remote":`,
		`"listener":"pmx","call":"TLS handshake","principal":"","remote":`,
		`"subject":"CN=host-append,O=acme","reason":"the client certificate does not verify against the client CA`,
		`no client certificate`,
		`is no principal's cert_subject`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s:\n%s", want, logs)
		}
	}
	t.Logf("listener × case, as run:\n| listener | credential | call | result |\n|---|---|---|---|\n%s", strings.Join(table, "\n"))
}

// With credentials but no TLS on the PMXBCKUP listener, nobody can
// present a certificate: every client is refused, with the reason; none
// is served as anonymous.
func TestPMXWithCredentialsWithoutTLSRefusesEveryone(t *testing.T) {
	creds, _ := principals(t, t.TempDir())
	p := start(t, nil, "serve", "all", "--store", t.TempDir(), "--credentials-file", creds)
	if !p.waitLog("the PMXBCKUP gateway refuses every client") {
		t.Errorf("no warning at startup:\n%s", p.logs())
	}
	out, err := pmxEnvRun(nil, "backup", "--server", p.pmx, "--type", "host", "--id", "plain", "--name", "x", writeFile(t, []byte("data")))
	if err == nil || !strings.Contains(out, "access refused: PMXBCKUP clients authenticate with a TLS client certificate, and this gateway serves no TLS") {
		t.Fatalf("backup over plain TCP with credentials configured: %v, want refused:\n%s", err, out)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// A process that is only the PMXBCKUP gateway, with credentials but no
// client certificates, would refuse every client: it does not start.
func TestPMXGatewayWithCredentialsNeedsClientCertificates(t *testing.T) {
	dir := t.TempDir()
	creds, tokens := principals(t, dir)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(tokens["admin"]), 0o600)
	cmd := exec.Command(binary, "serve", "pmx-gateway", "--chunk-service", "127.0.0.1:1", "--credentials-file", creds, "--auth-token-file", tokenFile,
		"--pmx-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), "client certificates") {
		t.Fatalf("serve pmx-gateway with credentials and no client CA: exit %d, %v:\n%s", code, err, out)
	}
}
