package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
)

// system is the whole deployment on one machine: MinIO, the chunk service
// and the four gateways, each its own container.
type system struct {
	minio, chunk, casync, pmx, pbs, rest *service
	casyncAddr, pmxAddr, pbsAddr         string
	// The dev overlay's tokens: its read and append principals', and the
	// admin token the pods share.
	readToken, appendToken, adminToken string
	teamBToken                         string // another tenant's append principal
	// PMXBCKUP's certificates: the Secret chunkbridge-pmx-tls the gateway
	// mounts, and the dev-pmx-* principals' client certificates.
	pki *pmxPKI
}

func container0(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	if len(spec.Containers) == 0 {
		t.Fatalf("%s has no container", name)
	}
	return spec.Containers[0]
}

func startSystem(t *testing.T) *system {
	m := loadManifests(t)
	pki := newPMXPKI(t, m)
	port := map[string]string{}
	for _, n := range []string{"minio", "grpc", "chunk-http", "casync", "casync-http", "pmx", "pmx-http", "pbs", "pbs-http", "rest-http"} {
		port[n] = freePort(t)
	}
	cluster := map[string]string{
		"chunk:9090":      "127.0.0.1:" + port["grpc"],
		"minio:9000":      "127.0.0.1:" + port["minio"],
		"0.0.0.0:9090":    "127.0.0.1:" + port["grpc"],
		"0.0.0.0:8473":    "127.0.0.1:" + port["casync"],
		"0.0.0.0:8007":    "127.0.0.1:" + port["pmx"],
		"--address=:9000": "--address=127.0.0.1:" + port["minio"],
	}
	withHTTP := func(name string) map[string]string {
		r := map[string]string{"0.0.0.0:8080": "127.0.0.1:" + port[name]}
		for k, v := range cluster {
			r[k] = v
		}
		return r
	}
	envOf := func(c corev1.Container, replace map[string]string) map[string]string {
		env := m.env(t, c)
		for k, v := range env {
			env[k] = rewrite([]string{v}, replace)[0]
		}
		return env
	}
	s := &system{casyncAddr: "127.0.0.1:" + port["casync"], pmxAddr: "127.0.0.1:" + port["pmx"], pbsAddr: "127.0.0.1:" + port["pbs"],
		readToken:   m.secretValue(t, "chunkbridge-dev-tokens", "dev-read"),
		appendToken: m.secretValue(t, "chunkbridge-dev-tokens", "dev-append"),
		teamBToken:  m.secretValue(t, "chunkbridge-dev-tokens", "dev-team-b-append"),
		adminToken:  m.secretValue(t, "chunkbridge-admin-token", "token"),
		pki:         pki,
	}

	mc := container0(t, m.sts["minio"].Spec.Template.Spec, "minio")
	data := t.TempDir()
	s.minio = run(t, "minio", minioImage, rewrite(mc.Args, cluster), envOf(mc, cluster), "/minio/health/ready", port["minio"], data+":/data")

	// The credentials file, the admin token and (PMXBCKUP gateway) its
	// certificates, mounted as the manifests do.
	cspec := m.deployments["chunk"].Spec.Template.Spec
	cc := container0(t, cspec, "chunk")
	s.chunk = run(t, "chunk", image, rewrite(cc.Args, withHTTP("chunk-http")), envOf(cc, cluster), "/readyz", port["chunk-http"], m.secretMounts(t, cspec, cc)...)
	gw := func(name, httpPort string, listen map[string]string) *service {
		spec := m.deployments[name].Spec.Template.Spec
		c := container0(t, spec, name)
		args := rewrite(rewrite(c.Args, listen), withHTTP(httpPort))
		return run(t, name, image, args, envOf(c, cluster), "/readyz", port[httpPort], m.secretMounts(t, spec, c)...)
	}
	s.casync = gw("casync-gateway", "casync-http", nil)
	s.pmx = gw("pmx-gateway", "pmx-http", nil)
	// PBS clients look for 8007 too: on one machine it gets its own port.
	s.pbs = gw("pbs-gateway", "pbs-http", map[string]string{"0.0.0.0:8007": "127.0.0.1:" + port["pbs"]})
	s.rest = gw("rest-gateway", "rest-http", nil)
	return s
}

func randomFile(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b[:n/2])
	copy(b[n/2:], b[:n/2]) // repeated halves: some chunks repeat
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func same(t *testing.T, a, b string) {
	t.Helper()
	x, _ := os.ReadFile(a)
	y, err := os.ReadFile(b)
	if err != nil || !bytes.Equal(x, y) {
		t.Fatalf("%s differs from %s (%v)", b, a, err)
	}
}

// command runs a client command and returns its output.
func command(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = t.TempDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// refused runs a client command that must fail, saying want.
func refused(t *testing.T, want, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("%s %s: %v, want it refused with %q:\n%s", name, strings.Join(args, " "), err, want, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	t.Logf("refused as expected: %s", lines[len(lines)-1])
}

// pmxArgs are the arguments of `chunkbridge pmx CMD --server ADDR`, with
// auth (the TLS flags of a client certificate, pmxPKI.args) and args.
func (s *system) pmxArgs(cmd string, auth []string, args ...string) []string {
	return append(append([]string{"pmx", cmd, "--server", s.pmxAddr}, auth...), args...)
}

func (s *system) casyncEnv(t *testing.T) []string {
	shim := filepath.Join(t.TempDir(), "chunkbridge-casync-ssh")
	if err := os.Symlink(hostBinary, shim); err != nil {
		t.Fatal(err)
	}
	// The backup client's token: an append principal adds, never replaces.
	return []string{"CASYNC_SSH_PATH=" + shim, "CHUNKBRIDGE_CASYNC_ADDR=" + s.casyncAddr, "CHUNKBRIDGE_TOKEN=" + s.appendToken}
}

// get sends GET url with the bearer token (none if "") and returns the
// status and body.
func get(t *testing.T, token, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

func getJSON(t *testing.T, token, url string, v any) {
	t.Helper()
	code, body := get(t, token, url)
	if code != 200 {
		t.Fatalf("GET %s = %d %s", url, code, body)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
}

var snapshotLine = regexp.MustCompile(`snapshot (\S+\.(?:fidx|didx))`)

func TestSystem(t *testing.T) {
	requireDocker(t)
	if _, err := exec.LookPath("casync"); err != nil && os.Getenv("CI") != "" {
		t.Fatal("CI needs casync")
	} else if err != nil {
		t.Skip("casync is not installed")
	}
	s := startSystem(t)
	env := s.casyncEnv(t)
	rest := "http://" + s.rest.http
	// casync sends a URL's user:password as HTTP Basic: the read principal.
	restAsReader := "http://dev-read:" + s.readToken + "@" + s.rest.http
	src := randomFile(t, 8<<20)

	t.Run("casync through the TCP gateway", func(t *testing.T) {
		command(t, env, "casync", "make", "srv:/e2e/a.caibx", src)
		out := filepath.Join(t.TempDir(), "out")
		command(t, env, "casync", "extract", "srv:/e2e/a.caibx", out)
		same(t, src, out)
	})
	t.Run("casync over HTTP", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		command(t, nil, "casync", "extract", "--store="+restAsReader+"/casync/chunks", restAsReader+"/casync/indexes/e2e/a.caibx", out)
		same(t, src, out)
	})
	var snapshot string
	// PMXBCKUP over mutual TLS: the backup client is dev-pmx-append, the
	// restore needs no more than dev-pmx-read.
	asAppend, asRead := s.pki.args(s.pki.append), s.pki.args(s.pki.read)
	t.Run("PMXBCKUP backup and restore", func(t *testing.T) {
		out := command(t, nil, hostBinary, s.pmxArgs("backup", asAppend, "--type", "host", "--id", "e2e", "--name", "data.img", "--fixed", src)...)
		m := snapshotLine.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("backup printed no snapshot path:\n%s", out)
		}
		snapshot = m[1]
		restored := filepath.Join(t.TempDir(), "restored")
		command(t, nil, hostBinary, s.pmxArgs("restore", asRead, snapshot, restored)...)
		same(t, src, restored)
	})
	// Refused backups store nothing: the REST step below finds one snapshot.
	t.Run("PMXBCKUP refuses clients without a valid certificate", func(t *testing.T) {
		backup := []string{"--type", "host", "--id", "e2e-refused", "--name", "data.img", "--fixed", src}
		refused(t, "no client certificate", hostBinary, s.pmxArgs("backup", []string{"--tls-ca", s.pki.ca}, backup...)...)
		refused(t, "dev-pmx-read may not add snapshots", hostBinary, s.pmxArgs("backup", asRead, backup...)...)
		refused(t, "refused the TLS handshake", hostBinary, s.pmxArgs("backup", s.pki.args(s.pki.stranger), backup...)...)
		refused(t, "no client certificate", hostBinary, s.pmxArgs("restore", []string{"--tls-ca", s.pki.ca}, snapshot, filepath.Join(t.TempDir(), "restored"))...)
	})
	t.Run("REST", func(t *testing.T) {
		var idx struct{ Indexes []struct{ Name string } }
		getJSON(t, s.readToken, rest+"/v1/indexes", &idx)
		if len(idx.Indexes) != 1 || idx.Indexes[0].Name != "e2e/a.caibx" {
			t.Fatalf("indexes = %+v", idx)
		}
		var snaps struct {
			Snapshots []struct{ Files []struct{ Path string } }
		}
		getJSON(t, s.readToken, rest+"/v1/snapshots", &snaps)
		if len(snaps.Snapshots) != 1 || snaps.Snapshots[0].Files[0].Path != snapshot {
			t.Fatalf("snapshots = %+v, want %s", snaps, snapshot)
		}
		var stats struct{ ChunkCount string }
		getJSON(t, s.adminToken, rest+"/v1/stats", &stats)
		if stats.ChunkCount == "" || stats.ChunkCount == "0" {
			t.Fatalf("stats = %+v", stats)
		}
		getJSON(t, s.readToken, rest+"/openapi.json", nil)
		// The dev overlay's access control: no token, no answer; stats are
		// for admins; health stays open.
		if code, body := get(t, "", rest+"/v1/indexes"); code != http.StatusUnauthorized {
			t.Errorf("GET /v1/indexes without a token = %d %s, want 401", code, body)
		}
		if code, body := get(t, s.appendToken, rest+"/v1/stats"); code != http.StatusForbidden {
			t.Errorf("GET /v1/stats as dev-append = %d %s, want 403", code, body)
		}
		// Another tenant (team-b) sees none of the default tenant's
		// snapshots, through the REST gateway and the chunk service that
		// run as separate containers (the principal is forwarded).
		var teamB struct {
			Snapshots []struct{ Files []struct{ Path string } }
		}
		getJSON(t, s.teamBToken, rest+"/v1/snapshots", &teamB)
		if len(teamB.Snapshots) != 0 {
			t.Errorf("team-b lists the default tenant's snapshots: %+v", teamB)
		}
		if code, body := get(t, "", rest+"/readyz"); code != http.StatusOK {
			t.Errorf("GET /readyz without a token = %d %s, want 200", code, body)
		}
	})
	// Today's Proxmox protocol: the dev append principal backs up through
	// the PBS gateway with its API token; the read principal restores.
	t.Run("PBS backup and restore", func(t *testing.T) {
		epoch := time.Now().Add(-time.Minute).Unix()
		chunks := make([][]byte, 4)
		for i := range chunks {
			chunks[i] = make([]byte, 200<<10)
			rand.Read(chunks[i])
		}
		b, err := pbstest.Open(t, s.pbsAddr, "//api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=dev-append:"+s.appendToken, pbstest.Query("default", "host", "e2e-pbs", epoch))
		if err != nil {
			t.Fatal(err)
		}
		if n := b.Backup("root.pxar.didx", "e2e-pbs", epoch, chunks, map[string]bool{}, nil); n != len(chunks) {
			t.Fatalf("uploaded %d chunks, want %d", n, len(chunks))
		}
		r, err := pbstest.Open(t, s.pbsAddr, "/api2/json/reader", pbs.ReaderProtocol, "PBSAPIToken dev-read:"+s.readToken, pbstest.Query("default", "host", "e2e-pbs", epoch))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.Restore("root.pxar.didx"), bytes.Join(chunks, nil)) {
			t.Fatal("the PBS restore differs from the backup")
		}
		if _, err := pbstest.Open(t, s.pbsAddr, "/api2/json/backup", pbs.BackupProtocol, "PBSAPIToken=dev-read:"+s.readToken, pbstest.Query("default", "host", "e2e-pbs", epoch+1)); err == nil || !strings.HasPrefix(err.Error(), "403") {
			t.Fatalf("a backup with the read token: %v, want 403", err)
		}
	})
	t.Run("MinIO restart", func(t *testing.T) {
		ctx := context.Background()
		stop := 10 * time.Second
		if err := s.minio.ctr.Stop(ctx, &stop); err != nil {
			t.Fatal(err)
		}
		waitReady(t, "http://"+s.chunk.http+"/readyz", http.StatusServiceUnavailable)
		waitReady(t, "http://"+s.casync.http+"/readyz", http.StatusServiceUnavailable)
		if err := s.minio.ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		waitReady(t, "http://"+s.chunk.http+"/readyz", http.StatusOK)
		// Nothing acknowledged before the outage is lost, and new pushes work.
		out := filepath.Join(t.TempDir(), "out")
		command(t, env, "casync", "extract", "srv:/e2e/a.caibx", out)
		same(t, src, out)
		command(t, env, "casync", "make", "srv:/e2e/b.caibx", src)
	})
	t.Run("chunk service restart under running gateways", func(t *testing.T) {
		ctx := context.Background()
		stop := 10 * time.Second
		if err := s.chunk.ctr.Stop(ctx, &stop); err != nil {
			t.Fatal(err)
		}
		for _, gw := range []*service{s.casync, s.pmx, s.rest} {
			waitReady(t, "http://"+gw.http+"/readyz", http.StatusServiceUnavailable)
		}
		if err := s.chunk.ctr.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for _, gw := range []*service{s.casync, s.pmx, s.rest} {
			waitReady(t, "http://"+gw.http+"/readyz", http.StatusOK)
		}
		out := filepath.Join(t.TempDir(), "out")
		command(t, env, "casync", "extract", "srv:/e2e/b.caibx", out)
		same(t, src, out)
		restored := filepath.Join(t.TempDir(), "restored")
		command(t, nil, hostBinary, s.pmxArgs("restore", asRead, snapshot, restored)...)
		same(t, src, restored)
	})
}
