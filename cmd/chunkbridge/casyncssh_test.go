package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

func TestParseSSHArgv(t *testing.T) {
	casyncPull := []string{"casync", "pull", "-", "-", "/images/os.caibx", "/default.castr"}
	for _, tc := range []struct {
		argv       []string
		host, port string
		command    []string
	}{
		// casync: HOST, then the remote argv as words.
		{append([]string{"srv"}, casyncPull...), "srv", "", casyncPull},
		{[]string{"user@srv", "chunkbridge-casync-remote", "--log-level=3", "--rate-limit-bps=1000", "push", "-", "-", "/a.caibx", "/default.castr", "/extra.castr"},
			"srv", "", []string{"chunkbridge-casync-remote", "--log-level=3", "--rate-limit-bps=1000", "push", "-", "-", "/a.caibx", "/default.castr", "/extra.castr"}},
		// desync: --, HOST (a URL's host, with its port), one quoted string.
		{[]string{"--", "srv", "casync pull - - - '/srv/store'"}, "srv", "", []string{"casync", "pull", "-", "-", "-", "/srv/store"}},
		{[]string{"--", "u@127.0.0.1:9000", `casync pull - - - '/it'\''s a store'`}, "127.0.0.1", "9000", []string{"casync", "pull", "-", "-", "-", "/it's a store"}},
		{[]string{"--", "[::1]:9000", "casync pull - - - '/s'"}, "::1", "9000", []string{"casync", "pull", "-", "-", "-", "/s"}},
		{[]string{"--", "[::1]", "casync pull - - - '/s'"}, "::1", "", []string{"casync", "pull", "-", "-", "-", "/s"}},
		// ssh's options, grouped or not, before and after the destination.
		{append([]string{"-p", "2222", "-o", "BatchMode=yes", "-Tx", "-i", "key", "srv"}, casyncPull...), "srv", "2222", casyncPull},
		{append([]string{"-oBatchMode=yes", "-p2222", "-4", "srv", "-l", "me", "--"}, casyncPull...), "srv", "2222", casyncPull},
		{append([]string{"ssh://me@srv:7000/"}, casyncPull...), "srv", "7000", casyncPull},
		{append([]string{"-p", "1", "srv:7000"}, casyncPull...), "srv", "7000", casyncPull},
		// Words and a string mixed, as ssh joins them.
		{[]string{"srv", "casync", "pull - -", "- '/a b'"}, "srv", "", []string{"casync", "pull", "-", "-", "-", "/a b"}},
	} {
		call, err := parseSSHArgv(tc.argv)
		if err != nil || call.host != tc.host || call.port != tc.port || !slices.Equal(call.command, tc.command) {
			t.Errorf("parseSSHArgv(%q) = %+v, %v; want host %q port %q command %q", tc.argv, call, err, tc.host, tc.port, tc.command)
		}
	}
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{nil, "HOST COMMAND"},
		{[]string{"srv"}, "HOST COMMAND"},
		{[]string{"--", "srv"}, "HOST COMMAND"},
		{[]string{"-p"}, "needs a value"},
		{[]string{"-Z", "srv", "casync"}, "unknown ssh option -Z"},
		{[]string{"-s", "--", "srv", "sftp"}, "subsystem"},
		{[]string{"srv", "casync pull - - - '/open"}, "unterminated"},
		{[]string{"srv", "casync pull - - - $HOME/s"}, "needs a shell"},
		{[]string{"srv", "casync pull - - - /s; rm -rf /"}, "needs a shell"},
		{[]string{"srv", "# nothing"}, "empty"},
	} {
		if call, err := parseSSHArgv(tc.argv); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseSSHArgv(%q) = %+v, %v; want an error saying %q", tc.argv, call, err, tc.want)
		}
	}
}

func TestRemoteWords(t *testing.T) {
	words := []string{"--log-level=3", "pull", "-", "-", "/a.caibx", "/default.castr"}
	t.Setenv("SSH_ORIGINAL_COMMAND", "casync pull - - - '/from ssh'")
	for _, tc := range []struct {
		argv, want []string
	}{
		{words, words},
		{[]string{"pull - - - '/a b'"}, []string{"pull", "-", "-", "-", "/a b"}},
		{[]string{"casync pull - - - '/a b'"}, []string{"pull", "-", "-", "-", "/a b"}},
		{[]string{"/usr/bin/chunkbridge-casync-remote --log-level=3 push - - /x -"}, []string{"--log-level=3", "push", "-", "-", "/x", "-"}},
		{nil, []string{"pull", "-", "-", "-", "/from ssh"}}, // a forced command
	} {
		got, err := remoteWords(tc.argv)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("remoteWords(%q) = %q, %v; want %q", tc.argv, got, err, tc.want)
		}
	}
	if _, err := remoteWords([]string{"casync pull - - - `id`"}); err == nil {
		t.Error("remoteWords took a command substitution")
	}
}

// The watcher finds an ABORT among other frames however the stream is cut
// into writes.
func TestAbortWatch(t *testing.T) {
	var stream []byte
	stream = (&caproto.Hello{Features: caproto.ReadableStore}).Encode(stream)
	stream = (&caproto.Chunk{ID: [32]byte{1}, Data: bytes.Repeat([]byte{0x6b}, 1000)}).Encode(stream) // ABORT's type bytes inside a body
	stream = (&caproto.Goodbye{}).Encode(stream)
	stream = caproto.NewAbort(uint32(syscall.ENOENT), "index images/x.caibx not found").Encode(stream)
	for _, step := range []int{1, 7, 16, 100, len(stream)} {
		var got []string
		w := &abortWatch{onAbort: func(a *caproto.Abort) { got = append(got, a.Reason) }}
		for p := stream; len(p) > 0; {
			n := min(step, len(p))
			w.Write(p[:n])
			p = p[n:]
		}
		if !slices.Equal(got, []string{"index images/x.caibx not found"}) {
			t.Errorf("writes of %d bytes: ABORTs seen %q", step, got)
		}
	}
	w := &abortWatch{onAbort: func(a *caproto.Abort) { t.Errorf("ABORT %q in a stream that is no caprotocol", a.Reason) }}
	w.Write([]byte("not caprotocol at all, not even a header"))
	w.Write(stream)
}

// fakeSSH writes an "ssh" that does what ssh and sshd do together: skip
// the options and "--", drop the destination, and hand the joined
// command to a shell (as sshd does with $SHELL -c). With forced set, it
// runs that command instead, the client's in SSH_ORIGINAL_COMMAND, as
// authorized_keys command="…" does.
func fakeSSH(t *testing.T, forced string) string {
	t.Helper()
	script := `#!/bin/sh
while :; do
	case $1 in
	--) shift; break ;;
	-[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;
	-*) shift ;;
	*) break ;;
	esac
done
shift
`
	if forced != "" {
		script += "SSH_ORIGINAL_COMMAND=\"$*\" exec " + forced + "\n"
	} else {
		script += "exec sh -c \"$*\"\n"
	}
	path := filepath.Join(t.TempDir(), "fake-ssh")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// desyncPull does what desync's ssh:// store does: it runs
// $CASYNC_SSH_PATH -- HOST "$CASYNC_REMOTE_PATH pull - - - 'PATH'", says
// HELLO wanting chunks, and REQUESTs them one by one; it returns each
// chunk's data.
func desyncPull(t *testing.T, env []string, path string, ids []string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ssh, remote := "", "casync"
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "CASYNC_SSH_PATH":
			ssh = v
		case "CASYNC_REMOTE_PATH":
			remote = v
		}
	}
	quoted := "'" + strings.ReplaceAll(path, "'", `'\''`) + "'" // desync's shellQuote
	cmd := exec.CommandContext(ctx, ssh, "--", "srv.example", remote+" pull - - - "+quoted)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w, r := caproto.NewWriter(in), caproto.NewReader(out, 0)
	w.WriteMessage(&caproto.Hello{Features: caproto.PullChunks})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := r.ReadMessage()
	if h, ok := m.(*caproto.Hello); !ok || h.Features&caproto.ReadableStore == 0 {
		t.Fatalf("want the server's HELLO offering chunks, got %#v, %v\n%s", m, err, stderr.String())
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	var got [][]byte
	for _, id := range ids { // one at a time, as desync's RequestChunk
		b, _ := hex.DecodeString(id)
		w.WriteMessage(&caproto.Request{IDs: [][32]byte{[32]byte(b)}})
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		m, err := r.ReadMessage()
		c, ok := m.(*caproto.Chunk)
		if !ok || hex.EncodeToString(c.ID[:]) != id {
			t.Fatalf("want the CHUNK %s, got %#v, %v\n%s", id, m, err, stderr.String())
		}
		data := c.Data
		if c.Flags&caproto.ChunkCompressed != 0 {
			if data, err = dec.DecodeAll(c.Data, nil); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, bytes.Clone(data))
	}
	w.WriteMessage(&caproto.Goodbye{})
	w.Flush()
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s: %v\n%s", ssh, err, stderr.String())
	}
	return got
}

// desync's ssh:// store, as desync calls ssh, reaches the store through
// the TCP shim, and through real-ssh semantics to casync-remote (run by a
// shell, and as a forced command).
func TestDesyncShape(t *testing.T) {
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	cs := cliChunks("desync", 3)
	upload(t, chunkbridgev1.NewChunkServiceClient(p.conn(t)), cs)
	ids := []string{cs[0].id, cs[2].id, cs[1].id}

	dir := t.TempDir()
	shim := filepath.Join(dir, "chunkbridge-casync-ssh")
	remote := filepath.Join(dir, "chunkbridge-casync-remote")
	for _, l := range []string{shim, remote} {
		if err := os.Symlink(binary, l); err != nil {
			t.Fatal(err)
		}
	}
	for name, env := range map[string][]string{
		"tcp":    {"CASYNC_SSH_PATH=" + shim, "CHUNKBRIDGE_CASYNC_ADDR=" + p.casync},
		"ssh":    {"CASYNC_SSH_PATH=" + fakeSSH(t, ""), "CASYNC_REMOTE_PATH=" + remote, "CHUNKBRIDGE_CHUNK_SERVICE=" + p.grpc},
		"forced": {"CASYNC_SSH_PATH=" + fakeSSH(t, remote), "CHUNKBRIDGE_CHUNK_SERVICE=" + p.grpc},
	} {
		t.Run(name, func(t *testing.T) {
			got := desyncPull(t, env, "/srv/it's a store", ids)
			for i, want := range []cliChunk{cs[0], cs[2], cs[1]} {
				if !bytes.Equal(got[i], want.data) {
					t.Fatalf("chunk %d: got %d bytes, want %s", i, len(got[i]), want.id)
				}
			}
		})
	}
}

// When the server refuses, stock casync's own message is only the errno;
// the reason the server sent must be on stderr too, over TCP (printed by
// the shim) and over ssh (printed by casync-remote).
func TestCasyncShowsServerReason(t *testing.T) {
	needCasync(t)
	p := start(t, nil, "serve", "all", "--store", t.TempDir())
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	src := blob(t, 5, 100_000)
	for name, c := range map[string]*casyncEnv{"tcp": tcpCasync(t, p), "ssh": stdioCasync(t, p)} {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				args []string
				say  string
			}{
				{[]string{"make", "srv:/trees/t.catar", filepath.Dir(src)}, "archives (.catar) are not supported"},
				{[]string{"extract", "srv:/images/absent.caibx", filepath.Join(t.TempDir(), "out")}, "images/absent.caibx"},
			} {
				out := c.runFail(tc.args...)
				if !strings.Contains(out, tc.say) {
					t.Errorf("casync %s failed without the server's reason %q:\n%s", strings.Join(tc.args, " "), tc.say, out)
				}
			}
		})
	}
}

// runFail runs casync, expects it to fail, and returns its output (the
// shim's and the remote's stderr included).
func (c *casyncEnv) runFail(args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "casync", args...)
	cmd.Env = append(os.Environ(), c.env...)
	cmd.Dir = c.t.TempDir()
	out, err := cmd.CombinedOutput()
	if err == nil {
		c.t.Fatalf("casync %s succeeded; want a refusal\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// casync-ssh's token: CHUNKBRIDGE_TOKEN or the file CHUNKBRIDGE_TOKEN_FILE,
// never both, never an empty file or one beyond the preamble's limit.
func TestCasyncToken(t *testing.T) {
	dir := t.TempDir()
	file := func(s string) string {
		p := filepath.Join(dir, fmt.Sprint(len(s)))
		os.WriteFile(p, []byte(s), 0o600)
		return p
	}
	for _, tc := range []struct {
		token, file, want, fails string
	}{
		{"", "", "", ""},
		{"cbt_abc", "", "cbt_abc", ""},
		{"", file(" cbt_from_file\n"), "cbt_from_file", ""},
		{"cbt_abc", file("cbt_x"), "", "set one"},
		{"", file(" \n"), "", "is empty"},
		{"", filepath.Join(dir, "absent"), "", "CHUNKBRIDGE_TOKEN_FILE"},
		{strings.Repeat("t", 1025), "", "", "at most 1024"},
	} {
		t.Setenv("CHUNKBRIDGE_TOKEN", tc.token)
		t.Setenv("CHUNKBRIDGE_TOKEN_FILE", tc.file)
		got, err := casyncToken("")
		if got != tc.want || (err == nil) != (tc.fails == "") || (err != nil && !strings.Contains(err.Error(), tc.fails)) {
			t.Errorf("token %.10q, file %q: %q, %v; want %q, error %q", tc.token, tc.file, got, err, tc.want, tc.fails)
		}
	}
}

// casync-remote's principal: none without credentials (as before them);
// with the file, a name it has; any other combination is refused.
func TestRemotePrincipal(t *testing.T) {
	creds, _ := principals(t, t.TempDir())
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	withFile, err := securityFlags{credentialsFile: creds, tokenFile: adminTokenFile(t)}.access(log, false)
	if err != nil {
		t.Fatal(err)
	}
	without, err := securityFlags{tokenFile: adminTokenFile(t)}.access(log, false)
	if err != nil {
		t.Fatal(err)
	}
	args := casync.Args{Push: true, Index: "x.caibx"}
	for _, tc := range []struct {
		acc        *access
		file, name string
		want       string // the principal, or the error
	}{
		{without, "", "", "anonymous"},
		{without, "", "write-user", "needs CHUNKBRIDGE_CREDENTIALS_FILE"},
		{withFile, creds, "", "name the principal"},
		{withFile, creds, "nobody", `no principal is named "nobody"`},
		{withFile, creds, "token-file", `no principal is named "token-file"`},
		{withFile, creds, "append-user", "append-user"},
	} {
		ctx, err := tc.acc.remotePrincipal(t.Context(), tc.file, tc.name, args)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = auth.FromContext(ctx).Name
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("file %q, --principal %q: %q, want %q", tc.file, tc.name, got, tc.want)
		}
	}
	if n := strings.Count(logs.String(), "access refused"); n != 4 {
		t.Errorf("%d refusals audited, want 4:\n%s", n, logs.String())
	}
}

// adminTokenFile writes an admin token file.
func adminTokenFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "token")
	tok, _ := auth.NewToken()
	os.WriteFile(p, []byte(tok), 0o600)
	return p
}
