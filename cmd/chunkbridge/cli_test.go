package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// usageCommands lists the commands the usage texts name: "serve all",
// "pmx backup", …, each with its parent ("serve", "pmx"), so that a
// command added to the usage is walked by the tests below.
func usageCommands(t *testing.T) []string {
	t.Helper()
	word := regexp.MustCompile(`^[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*$`)
	var cmds []string
	for _, text := range []string{usage, pmxUsage} {
		for _, line := range strings.Split(text, "\n") {
			// The command ends where the description column starts.
			cmd, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
			f := strings.Fields(cmd)
			if len(f) < 2 || f[0] != "chunkbridge" {
				continue
			}
			prefixes := []string{""}
			for _, w := range f[1:] {
				if !word.MatchString(w) {
					break
				}
				var next []string
				for _, p := range prefixes {
					for _, alt := range strings.Split(w, "|") {
						next = append(next, strings.TrimSpace(p+" "+alt))
					}
				}
				prefixes = next
			}
			for _, p := range prefixes {
				if parent, _, ok := strings.Cut(p, " "); ok && !slices.Contains(cmds, parent) {
					cmds = append(cmds, parent)
				}
				if p != "" && !slices.Contains(cmds, p) {
					cmds = append(cmds, p)
				}
			}
		}
	}
	if len(cmds) < 20 {
		t.Fatalf("found only %q in the usage texts", cmds)
	}
	return cmds
}

// Every command and subcommand answers -h and --help with what it does,
// on stdout, and exits 0.
func TestHelpOnEveryCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	cmds := usageCommands(t)
	for _, c := range cmds {
		if helps[c] == "" {
			t.Errorf("%q is in the usage but has no help text", c)
		}
	}
	for c := range helps {
		if !slices.Contains(cmds, c) {
			t.Errorf("help text for %q, which the usage does not name", c)
		}
	}
	for _, c := range cmds {
		for _, h := range []string{"-h", "--help"} {
			args := append(strings.Fields(c), h)
			cmd := exec.Command(binary, args...)
			cmd.Dir = t.TempDir()
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if err != nil {
				t.Errorf("chunkbridge %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
				continue
			}
			// The description: the help's first paragraph after the usage line.
			paras := strings.Split(helps[c], "\n\n")
			if len(paras) < 2 || len(strings.Fields(paras[1])) < 5 || !strings.Contains(stdout.String(), paras[1]) {
				t.Errorf("chunkbridge %s printed no description:\n%s", strings.Join(args, " "), stdout.String())
			}
		}
	}
}

// A command line the program cannot mean exits 2, before doing anything;
// a well-formed command whose operation fails exits 1.
func TestExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	closed := closedAddr(t)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		want int
		args []string
		say  string
	}{
		{2, nil, "Usage:"},
		{2, []string{"nonsense"}, "unknown command"},
		{2, []string{"serve"}, "which service"},
		{2, []string{"serve", "all", "--no-such-flag"}, "flag provided but not defined"},
		{2, []string{"gc", "--grace", "soon"}, "invalid value"},
		{2, []string{"prune", "--chunk-service", closed}, "--keep-"},
		{2, []string{"stats", "extra"}, "unexpected argument"},
		{2, []string{"pmx"}, "Usage:"},
		{2, []string{"pmx", "backup", "--type", "vm", "--id", "1"}, "want an input"},
		{2, []string{"pmx", "backup", "--type", "toaster", "--id", "1", missing}, "--type"},
		{2, []string{"pmx", "restore", "vm/1/latest/disk.img.fidx"}, "SNAPSHOT_PATH and OUT"},
		{2, []string{"pmx", "restore", "--force", "vm/1/latest/disk.img.fidx"}, "SNAPSHOT_PATH and OUT"},
		{2, []string{"pmx", "list", "--api", "ftp://x"}, "--api"},
		{2, []string{"casync-ssh", "srv"}, "HOST COMMAND"},
		{2, []string{"casync-remote", "fetch", "-", "-", "-", "-"}, "want pull or push"},
		{2, []string{"version", "extra"}, "no arguments"},
		{1, []string{"stats", "--chunk-service", closed}, "stats:"},
		{1, []string{"gc", "--chunk-service", closed}, "gc:"},
		{1, []string{"pmx", "hashes", "--server", closed, "vm/1/latest/disk.img.fidx"}, "connect"},
		{1, []string{"pmx", "backup", "--server", closed, "--type", "vm", "--id", "1", missing}, "no such file"},
		{1, []string{"pmx", "list", "--api", "http://" + closed}, "pmx list"},
		// stdin is /dev/null: refused before connecting.
		{1, []string{"pmx", "backup", "--server", closed, "--type", "host", "--id", "1", "-"}, "stdin is empty; nothing stored (add --allow-empty"},
		{1, []string{"casync-ssh", "srv", "casync", "pull", "-", "-", "/a.caibx", "-"}, "casync gateway"},
		{0, []string{"version"}, "chunkbridge"},
		{0, []string{"version", "--json"}, `"goVersion": "go`},
		{2, []string{"version", "--yaml"}, "flag provided but not defined"},
		{0, []string{"help"}, "Usage:"},
		{0, []string{"help", "gc"}, "Deletes the chunks"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, binary, tc.args...)
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "CHUNKBRIDGE_CASYNC_ADDR="+closed)
		out, err := cmd.CombinedOutput()
		cancel()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.want || !strings.Contains(string(out), tc.say) {
			t.Errorf("chunkbridge %s: exit %d, want %d saying %q:\n%s", strings.Join(tc.args, " "), code, tc.want, tc.say, out)
		}
	}
}

// closedAddr is a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A --store or --s3-endpoint the program cannot mean is refused (exit 2)
// with the accepted forms, and nothing is created: "s3:/bucket" used to
// serve a local directory named "s3:".
func TestStoreAndEndpointRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	for _, tc := range []struct {
		args []string
		say  string
	}{
		{[]string{"--store", "s3:/bucket"}, "s3:// has two slashes"},
		{[]string{"--store", "s3:bucket"}, "want a directory (./data, /srv/chunks) or s3://BUCKET[/PREFIX]"},
		{[]string{"--store", "file:/srv"}, "not a store URL"},
		{[]string{"--store", "s3://b", "--s3-endpoint", "ftp://127.0.0.1:9"}, "want HOST, HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT]"},
		{[]string{"--store", "s3://b", "--s3-endpoint", "http://127.0.0.1:9/bucket"}, "only a host and port"},
		{[]string{"--store", "s3://b", "--s3-endpoint", "https://127.0.0.1:9", "--s3-insecure"}, "drop one"},
	} {
		dir := t.TempDir()
		cmd := exec.Command(binary, append([]string{"serve", "chunk", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, tc.args...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != exitUsage || !strings.Contains(string(out), tc.say) {
			t.Errorf("%v: %v, want exit 2 saying %q:\n%s", tc.args, err, tc.say, out)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%v created %v", tc.args, ents)
		}
	}
}

// make install puts the binary and the casync shim links in PREFIX/bin,
// where no root is needed, and the links run their commands.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs make and the Go toolchain")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	prefix := t.TempDir()
	cmd := exec.Command("make", "-C", "../..", "install", "PREFIX="+prefix)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for name, say := range map[string]string{
		"chunkbridge":               "Usage: chunkbridge casync-ssh",
		"chunkbridge-casync-ssh":    "Usage: chunkbridge casync-ssh",
		"chunkbridge-casync-remote": "Usage: chunkbridge casync-remote",
	} {
		args := []string{"-h"}
		if name == "chunkbridge" {
			args = []string{"casync-ssh", "-h"}
		}
		out, err := exec.Command(filepath.Join(prefix, "bin", name), args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), say) {
			t.Errorf("%s %v: %v\n%s", name, args, err, out)
		}
	}
}
