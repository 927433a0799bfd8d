package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeConfig writes $XDG_CONFIG_HOME/chunkbridge/config.yaml in a new
// directory and points XDG_CONFIG_HOME at it.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	p := filepath.Join(dir, "chunkbridge", "config.yaml")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// adminSettings parses an admin command's flags as stats would.
func adminSettings(t *testing.T, args ...string) (clientFlags, error) {
	t.Helper()
	var c clientFlags
	err := parseClientFlags("stats", args, io.Discard, io.Discard, &c, nil)
	return c, err
}

const twoProfiles = `default_profile: a
profiles:
  a:
    chunk_service: 127.0.0.1:1111
    token_file: /a/token
  b:
    chunk_service: 127.0.0.1:2222
    chunk_service_tls: true
`

// flag > CHUNKBRIDGE_* > profile > built-in default, for every setting.
func TestConfigPrecedence(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // no file: the defaults
	c, err := adminSettings(t)
	if err != nil || c.chunkService != "127.0.0.1:9090" || c.tokenFile != "" {
		t.Fatalf("without a config file: %+v, %v", c, err)
	}
	writeConfig(t, twoProfiles)
	c, err = adminSettings(t)
	if err != nil || c.chunkService != "127.0.0.1:1111" || c.tokenFile != "/a/token" || c.chunkServiceTLS {
		t.Fatalf("default profile: %+v, %v", c, err)
	}
	t.Setenv("CHUNKBRIDGE_CHUNK_SERVICE", "127.0.0.1:3333")
	c, _ = adminSettings(t)
	if c.chunkService != "127.0.0.1:3333" || c.tokenFile != "/a/token" {
		t.Fatalf("environment over profile: %+v", c)
	}
	c, _ = adminSettings(t, "--chunk-service", "127.0.0.1:4444", "--auth-token-file", "/flag/token")
	if c.chunkService != "127.0.0.1:4444" || c.tokenFile != "/flag/token" {
		t.Fatalf("flags over environment and profile (--auth-token-file is --token-file): %+v", c)
	}
	t.Setenv("CHUNKBRIDGE_TOKEN_FILE", "/env/token")
	c, _ = adminSettings(t)
	if c.tokenFile != "/env/token" {
		t.Fatalf("CHUNKBRIDGE_TOKEN_FILE over the profile's token_file: %+v", c)
	}
}

func TestProfileSelection(t *testing.T) {
	path := writeConfig(t, twoProfiles)
	c, err := adminSettings(t, "--profile", "b")
	if err != nil || c.chunkService != "127.0.0.1:2222" || !c.chunkServiceTLS || c.tokenFile != "" {
		t.Fatalf("--profile b: %+v, %v", c, err)
	}
	t.Setenv("CHUNKBRIDGE_PROFILE", "b")
	if c, _ = adminSettings(t); c.chunkService != "127.0.0.1:2222" {
		t.Fatalf("CHUNKBRIDGE_PROFILE=b: %+v", c)
	}
	if c, _ = adminSettings(t, "--profile", "a"); c.chunkService != "127.0.0.1:1111" {
		t.Fatalf("--profile a over CHUNKBRIDGE_PROFILE=b: %+v", c)
	}
	_, err = adminSettings(t, "--profile", "prod")
	var u usageError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), `profile "prod"`) || !strings.Contains(err.Error(), "a, b") {
		t.Fatalf("an unknown profile: %v", err)
	}
	// --config names another file; one that is missing is an error.
	t.Setenv("CHUNKBRIDGE_PROFILE", "")
	other := filepath.Join(t.TempDir(), "other.yaml")
	os.WriteFile(other, []byte("profiles: {x: {chunk_service: 127.0.0.1:5555}}\ndefault_profile: x\n"), 0o600)
	if c, err = adminSettings(t, "--config", other); err != nil || c.chunkService != "127.0.0.1:5555" {
		t.Fatalf("--config %s: %+v, %v", other, c, err)
	}
	if _, err = adminSettings(t, "--config", path+".missing"); !errors.As(err, &u) {
		t.Fatalf("--config naming no file: %v", err)
	}
}

// A typo in the config file is an error naming the field, exit 2.
func TestConfigUnknownField(t *testing.T) {
	writeConfig(t, "profiles:\n  a:\n    chunk_servce: 127.0.0.1:1111\n")
	_, err := adminSettings(t, "--profile", "a")
	if err == nil || !strings.Contains(err.Error(), "chunk_servce") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("unknown field: %v", err)
	}
	if code := exitCode(err, io.Discard); code != exitUsage {
		t.Fatalf("exit %d, want %d", code, exitUsage)
	}
	writeConfig(t, "default_profle: a\n")
	if _, err := adminSettings(t); err == nil || !strings.Contains(err.Error(), "default_profle") {
		t.Fatalf("unknown top-level field: %v", err)
	}
}

// snapshotsAPI is a REST API that lists one snapshot file and records
// each request's Authorization header.
func snapshotsAPI(t *testing.T) (*httptest.Server, *[]string) {
	var auths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		auths = append(auths, r.Header.Get("Authorization"))
		w.Write([]byte(`{"snapshots":[{"type":"host","backupId":"web-01","time":"2026-11-25T10:00:00Z","files":[
			{"path":"host/web-01/2026-11-25T10:00:00Z/a.didx","name":"a.didx","contentSize":"10","chunkCount":"1"}]}]}`))
	}))
	t.Cleanup(srv.Close)
	return srv, &auths
}

// pmx list asks the API it is given and never one guessed from --server.
func TestPMXListNamesItsAPI(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	srv, auths := snapshotsAPI(t)
	for _, c := range []struct {
		name string
		args []string
		env  string
	}{
		{"flag", []string{"--server", "127.0.0.1:8007"}, ""},
		{"environment", nil, "127.0.0.1:18007"},
	} {
		t.Setenv("CHUNKBRIDGE_SERVER", c.env)
		if c.env == "" {
			os.Unsetenv("CHUNKBRIDGE_SERVER")
		}
		_, _, err := pmxRun(t, append([]string{"list"}, c.args...)...)
		var u usageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), "--api") || !strings.Contains(err.Error(), "no packet that lists snapshots") {
			t.Fatalf("%s: --server without --api: %v", c.name, err)
		}
	}
	os.Unsetenv("CHUNKBRIDGE_SERVER")
	// A profile with only pmx_server is refused the same way; with api, it
	// is asked, with the profile's token.
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("cbt_profile-token-0123456789\n"), 0o600)
	writeConfig(t, "profiles:\n  p: {pmx_server: 127.0.0.1:18007}\n  q: {pmx_server: 127.0.0.1:18007, api: "+srv.URL+", token_file: "+tokenFile+"}\n")
	if _, _, err := pmxRun(t, "list", "--profile", "p"); err == nil || !strings.Contains(err.Error(), "--api") {
		t.Fatalf("profile without api: %v", err)
	}
	stdout, _, err := pmxRun(t, "list", "--profile", "q")
	if err != nil || !strings.Contains(stdout, "host/web-01/2026-11-25T10:00:00Z: 1 file") || !strings.Contains(stdout, "  a.didx ") {
		t.Fatalf("profile with api: %q, %v", stdout, err)
	}
	if len(*auths) != 1 || (*auths)[0] != "Bearer cbt_profile-token-0123456789" {
		t.Fatalf("requests' Authorization: %q", *auths)
	}
	// --server and --api: the API named.
	if _, _, err := pmxRun(t, "list", "--server", "127.0.0.1:18007", "--api", srv.URL); err != nil {
		t.Fatal(err)
	}
	// Neither: make run's REST gateway.
	_, _, err = pmxRun(t, "list")
	if err != nil && !strings.Contains(err.Error(), "http://127.0.0.1:8080/v1/snapshots") {
		t.Fatalf("list with neither: %v", err)
	}
}

// casync-ssh takes its gateway and token from the profile, after the
// environment.
func TestCasyncSSHProfile(t *testing.T) {
	writeConfig(t, "default_profile: p\nprofiles:\n  p: {casync_addr: 127.0.0.1:1}\n")
	t.Setenv("CHUNKBRIDGE_CASYNC_ADDR", "")
	ctx := context.Background()
	err := run(ctx, []string{"casync-ssh", "srv", "casync", "pull", "-", "-", "-", "/x.caibx"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "gateway at 127.0.0.1:1 ") {
		t.Fatalf("profile casync_addr: %v", err)
	}
	t.Setenv("CHUNKBRIDGE_CASYNC_ADDR", "127.0.0.1:2")
	err = run(ctx, []string{"casync-ssh", "srv", "casync", "pull", "-", "-", "-", "/x.caibx"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "gateway at 127.0.0.1:2 ") {
		t.Fatalf("CHUNKBRIDGE_CASYNC_ADDR over the profile: %v", err)
	}
}

// isJSON fails unless s is one JSON value (or, with several, a stream of
// them).
func isJSON(t *testing.T, what, s string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%s --json printed no JSON object: %v\n%s", what, err, s)
	}
	return v
}

// Every command that prints a result prints it as JSON with --json.
func TestJSONOutputs(t *testing.T) {
	if testing.Short() {
		t.Skip("starts chunkbridge serve all")
	}
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	in := filepath.Join(t.TempDir(), "a.img")
	writeRandomFile(t, in, 300<<10)
	do := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var stdout, stderr bytes.Buffer
		if err := run(ctx, args, &stdout, &stderr); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return stdout.String()
	}
	srv := []string{"--server", p.pmx}
	b := isJSON(t, "pmx backup", do(append([]string{"pmx", "backup", "--type", "host", "--id", "h", "--json", in}, srv...)...))
	path, _ := b["path"].(string)
	if !strings.HasSuffix(path, "/a.img.didx") || b["chunks"] == nil || b["uploaded_chunks"] == nil {
		t.Fatalf("pmx backup --json: %v", b)
	}
	r := isJSON(t, "pmx restore", do(append([]string{"pmx", "restore", "--json", path, filepath.Join(t.TempDir(), "out")}, srv...)...))
	if r["bytes"] != float64(300<<10) {
		t.Fatalf("pmx restore --json: %v", r)
	}
	h := isJSON(t, "pmx hashes", do(append([]string{"pmx", "hashes", "--json", path}, srv...)...))
	if d, _ := h["digests"].([]any); len(d) == 0 {
		t.Fatalf("pmx hashes --json: %v", h)
	}
	l := isJSON(t, "pmx list", do("pmx", "list", "--json", "--api", "http://"+p.http))
	if s, _ := l["snapshots"].([]any); len(s) != 1 {
		t.Fatalf("pmx list --json: %v", l)
	}
	cs := []string{"--chunk-service", p.grpc, "--json"}
	isJSON(t, "stats", do(append([]string{"stats"}, cs...)...))
	isJSON(t, "gc", do(append([]string{"gc", "--dry-run"}, cs...)...))
	isJSON(t, "verify", do(append([]string{"verify"}, cs...)...))
	isJSON(t, "prune", do(append([]string{"prune", "--keep-last", "1", "--dry-run"}, cs...)...))
	isJSON(t, "version", do("version", "--json"))
	isJSON(t, "auth add-token", do("auth", "add-token", "--role", "read", "--json", "x"))
}

// The completion scripts name every command, subcommand and flag the help
// lists, and are valid shell.
func TestCompletion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"completion", "bash"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	bash := out.String()
	cmds := usageCommands(t)
	for _, c := range cmds {
		for _, w := range strings.Fields(c) {
			if !strings.Contains(bash, w) {
				t.Errorf("the bash script does not name %q (of %q)", w, c)
			}
		}
	}
	for _, want := range []string{`"pmx list") flags="`, "--profile", "--api", `"gc") flags="`, "--json", "--keep-last", "--chunk-service"} {
		if !strings.Contains(bash, want) {
			t.Errorf("the bash script lacks %q", want)
		}
	}
	check := exec.Command("bash", "-n")
	check.Stdin = strings.NewReader(bash)
	if msg, err := check.CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, msg)
	}
	// Complete "chunkbridge pmx l" and "chunkbridge gc --dr" in bash.
	for line, want := range map[string]string{"chunkbridge pmx l": "list", "chunkbridge gc --dr": "--dry-run", "chunkbridge ": "completion"} {
		script := bash + "\nCOMP_WORDS=(" + line + ")\n"
		if strings.HasSuffix(line, " ") {
			script += "COMP_WORDS+=('')\n"
		}
		script += "COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _chunkbridge; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
		got, err := exec.Command("bash", "-c", script).CombinedOutput()
		if err != nil || !strings.Contains(string(got), want) {
			t.Errorf("completing %q: %q, %v; want %s", line, got, err, want)
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"completion", "zsh"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "#compdef chunkbridge") || !strings.Contains(out.String(), `"pmx list") flags="`) {
		t.Fatalf("zsh script:\n%s", out.String())
	}
	if zsh, err := exec.LookPath("zsh"); err == nil {
		if msg, err := exec.Command(zsh, "-n", "-c", out.String()).CombinedOutput(); err != nil {
			t.Fatalf("zsh -n: %v\n%s", err, msg)
		}
	}
	if err := run(context.Background(), []string{"completion", "fish"}, io.Discard, io.Discard); exitCode(err, io.Discard) != exitUsage {
		t.Fatalf("completion fish: %v", err)
	}
}
