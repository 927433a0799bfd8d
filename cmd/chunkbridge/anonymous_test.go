package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9090": true, "127.0.0.2:1": true, "[::1]:8080": true, "localhost:8080": true,
		"0.0.0.0:9090": false, ":9090": false, "[::]:8080": false, "10.0.0.1:80": false,
		"chunk:9090": false, "127.0.0.1": false, "": false,
	} {
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// serve refuses a listener on a non-loopback address while no credential
// is configured (every caller would be an admin), naming the flag, the
// address and the ways out, before it opens anything. No address here can
// be bound (port -1): without the check the process fails to listen
// instead, and never listens beyond loopback.
func TestAnonymousListenerRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	loop := map[string]string{
		"--grpc-listen": "127.0.0.1:0", "--http-listen": "127.0.0.1:0",
		"--casync-listen": "127.0.0.1:0", "--pmx-listen": "127.0.0.1:0",
	}
	modeFlags := map[string][]string{
		"all":            {"--grpc-listen", "--casync-listen", "--pmx-listen", "--http-listen"},
		"chunk":          {"--grpc-listen", "--http-listen"},
		"casync-gateway": {"--casync-listen", "--http-listen"},
		"pmx-gateway":    {"--pmx-listen", "--http-listen"},
		"rest-gateway":   {"--http-listen"},
	}
	// args runs mode with every listener on loopback but flag on addr.
	args := func(mode, flag, addr string, extra ...string) []string {
		a := []string{"serve", mode}
		for _, f := range modeFlags[mode] {
			v := loop[f]
			if f == flag {
				v = addr
			}
			a = append(a, f, v)
		}
		return append(a, extra...)
	}
	runIn := func(dir string, env []string, a []string) (int, string) {
		t.Helper()
		cmd := exec.Command(binary, a...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	for mode, flags := range modeFlags {
		for _, flag := range flags {
			for _, addr := range []string{"0.0.0.0:-1", ":-1", "[::]:-1", "chunk.example:-1"} {
				dir := t.TempDir()
				code, out := runIn(dir, nil, args(mode, flag, addr))
				for _, say := range []string{flag + " " + addr + " is not a loopback address", "--credentials-file", "--auth-token-file", "--allow-anonymous"} {
					if !strings.Contains(out, say) {
						t.Errorf("serve %s %s %s: output does not say %q:\n%s", mode, flag, addr, say, out)
					}
				}
				if code != exitUsage {
					t.Errorf("serve %s %s %s: exit %d, want %d", mode, flag, addr, code, exitUsage)
				}
				if ents, _ := os.ReadDir(dir); len(ents) != 0 {
					t.Errorf("serve %s %s %s: refused, but created %v", mode, flag, addr, ents)
				}
			}
		}
	}

	// Each way out gets past the check: the process goes on to listen,
	// and fails there on a port nothing can bind.
	dir := t.TempDir()
	creds, tokens := principals(t, dir)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tokens["admin"]), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		env   []string
		extra []string
	}{
		{"--allow-anonymous", nil, []string{"--allow-anonymous"}},
		{"CHUNKBRIDGE_ALLOW_ANONYMOUS", []string{"CHUNKBRIDGE_ALLOW_ANONYMOUS=true"}, nil},
		{"--auth-token-file", nil, []string{"--auth-token-file", tokenFile}},
		{"--credentials-file", nil, []string{"--credentials-file", creds, "--auth-token-file", tokenFile}},
	} {
		code, out := runIn(t.TempDir(), tc.env, args("rest-gateway", "--http-listen", "0.0.0.0:-1", tc.extra...))
		if code != exitFailed || !strings.Contains(out, "--http-listen 0.0.0.0:-1: listen tcp") || strings.Contains(out, "not a loopback address") {
			t.Errorf("%s: exit %d, want 1 from listening, not the refusal:\n%s", tc.name, code, out)
		}
		if anon := strings.Contains(out, "serving without authentication"); anon != (tc.extra == nil || tc.extra[0] == "--allow-anonymous") {
			t.Errorf("%s: warning logged %v:\n%s", tc.name, anon, out)
		}
	}
}
