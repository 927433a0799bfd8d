package main

// TestREADME runs the command blocks of README.md, so that every command a
// reader copies from it works as written. The rules:
//
//   - A fenced block tagged ```sh is commands; it is run. Untagged blocks
//     are output, listings or file contents and are never run; other shell
//     tags (bash, shell, console) are refused, so that no block is left out
//     by mistake.
//   - A ```sh block that cannot run here (it needs AWS, Kubernetes, a real
//     ssh server, a tool CI does not install, or holds placeholders) has
//     `<!-- readme-test: skip REASON -->` on the line just above its fence.
//     The reason is required; the test logs every skipped block with it.
//   - The blocks run in README order in one bash (set -euo pipefail), so
//     later blocks see the files and variables of earlier ones, in a
//     temporary working directory holding the sample files they name
//     (os.img, disk.img) and bin/chunkbridge, with a temporary HOME whose
//     .curlrc has fail-with-body (a curl that gets an HTTP error fails).
//     `make` runs in the repository (make install puts the binary and the
//     casync shims into $HOME/.local/bin). A missing grpcurl is replaced
//     by a stand-in (grpcurlMain) that makes the same calls.
//   - The test starts `chunkbridge serve all` on free loopback ports before
//     the first block; `make run &` stands for it and is not run. The
//     README's addresses (127.0.0.1 or localhost, ports 8080, 9090, 8473,
//     8007) are rewritten to that server's ports, and
//     CHUNKBRIDGE_CHUNK_SERVICE names its gRPC address for the commands
//     that default to 127.0.0.1:9090.
//   - A block that runs a server in the foreground (`chunkbridge serve …`,
//     `bin/chunkbridge serve …`) gets it started by the test with the same
//     flags, in the same working directory, on its own store and free
//     loopback ports (its listen flags are replaced); the rest of that
//     block talks to it, and it is stopped at the end of the block.
//   - A failing command fails the test with its README line, the block's
//     line and the block's output; the blocks after it are not run.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/chunkbridge/chunkbridge/internal/shellwords"
)

const readmeSkipPrefix = "<!-- readme-test: skip"

// readmeBlock is a ```sh block of README.md.
type readmeBlock struct {
	line  int      // README line of the block's first command line
	lines []string // the lines between the fences
	skip  string   // the reason it is not run, or ""
}

// readmeBlocks returns the ```sh blocks of a README, refusing a skip
// marker without a reason or without a block under it, and shell blocks
// tagged otherwise.
func readmeBlocks(text string) ([]readmeBlock, error) {
	lines := strings.Split(text, "\n")
	var blocks []readmeBlock
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.HasPrefix(l, readmeSkipPrefix) {
			reason, ok := strings.CutSuffix(strings.TrimPrefix(l, readmeSkipPrefix), "-->")
			if reason = strings.TrimSpace(reason); !ok || reason == "" {
				return nil, fmt.Errorf("README.md:%d: a skip marker is `%s REASON -->`, with a reason", i+1, readmeSkipPrefix)
			}
			if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "```sh" {
				return nil, fmt.Errorf("README.md:%d: a skip marker must be just above a ```sh fence", i+1)
			}
			continue
		}
		if !strings.HasPrefix(l, "```") {
			continue
		}
		tag := strings.TrimSpace(strings.TrimPrefix(l, "```"))
		switch tag {
		case "bash", "shell", "console", "shell-session", "zsh":
			return nil, fmt.Errorf("README.md:%d: tag command blocks sh (run by TestREADME), not %s", i+1, tag)
		}
		open := i
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
		}
		if i == len(lines) {
			return nil, fmt.Errorf("README.md:%d: the block is not closed", open+1)
		}
		if tag != "sh" {
			continue
		}
		b := readmeBlock{line: open + 2, lines: lines[open+1 : i]}
		if open > 0 && strings.HasPrefix(lines[open-1], readmeSkipPrefix) {
			b.skip = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(lines[open-1], readmeSkipPrefix), "-->"))
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// readmeSegment is a part of a block: commands for bash, or (serve set) a
// server the test starts.
type readmeSegment struct {
	line  int
	lines []string
	serve []string // chunkbridge's arguments
}

var readmeServe = regexp.MustCompile(`^(bin/)?chunkbridge serve `)

// segments splits a block at the servers it starts in the foreground and
// replaces `make run &` (the test's server) with a no-op of one line.
func (b readmeBlock) segments() ([]readmeSegment, error) {
	var segs []readmeSegment
	cur := readmeSegment{line: b.line}
	for i := 0; i < len(b.lines); i++ {
		l := strings.TrimSpace(b.lines[i])
		if strings.HasPrefix(l, "make run &") {
			cur.lines = append(cur.lines, ": # make run: the test's server")
			continue
		}
		if !readmeServe.MatchString(l) || strings.HasSuffix(l, "&") {
			cur.lines = append(cur.lines, b.lines[i])
			continue
		}
		segs = append(segs, cur)
		start := i
		cmd := b.lines[i]
		for strings.HasSuffix(strings.TrimSpace(b.lines[i]), `\`) && i+1 < len(b.lines) {
			i++
			cmd += "\n" + b.lines[i]
		}
		words, err := shellwords.Split(cmd)
		if err != nil {
			return nil, fmt.Errorf("README.md:%d: the server's command line: %v", b.line+start, err)
		}
		segs = append(segs, readmeSegment{line: b.line + start, serve: words[1:]})
		cur = readmeSegment{line: b.line + i + 1}
	}
	return append(segs, cur), nil
}

var readmeAddr = regexp.MustCompile(`\b(127\.0\.0\.1|localhost):(8080|9090|8473|8007)\b`)

// readmePorts maps the README's ports to a server's.
func readmePorts(t *testing.T, p *process) map[string]string {
	ports := map[string]string{}
	for readme, addr := range map[string]string{"8080": p.http, "9090": p.grpc, "8473": p.casync, "8007": p.pmx} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatalf("server address %q: %v", addr, err)
		}
		ports[readme] = port
	}
	return ports
}

func TestREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the README's commands against a server")
	}
	for _, tool := range []string{"bash", "make", "go", "casync", "curl", "jq", "openssl", "tar", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; CI needs it for the README's commands", tool)
			}
			t.Skipf("%s is not installed (the README's commands use it)", tool)
		}
	}
	text, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := readmeBlocks(string(text))
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}

	// The environment: a working directory with the sample files, a HOME,
	// the Go caches of this one (make install builds), and grpcurl.
	work, home, tools := t.TempDir(), t.TempDir(), t.TempDir()
	rnd := rand.New(rand.NewSource(13))
	for name, size := range map[string]int{"os.img": 3 << 20, "disk.img": 5 << 20} {
		data := make([]byte, size)
		rnd.Read(data[:size/2])
		copy(data[size/2:], data) // half repeats: something to deduplicate
		if err := os.WriteFile(filepath.Join(work, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Dir(binary), filepath.Join(work, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".curlrc"), []byte("fail-with-body\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("grpcurl"); err != nil {
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(self, filepath.Join(tools, "grpcurl")); err != nil {
			t.Fatal(err)
		}
		t.Log("grpcurl is not installed: the test's stand-in makes its calls")
	}
	goenv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	gv := strings.Split(strings.TrimSpace(string(goenv)), "\n")
	if len(gv) != 3 {
		t.Fatalf("go env: %q", goenv)
	}

	srv := start(t, nil, "serve", "all", "--store", t.TempDir())
	env := []string{
		"HOME=" + home, "PATH=" + tools + ":" + os.Getenv("PATH"),
		"GOCACHE=" + gv[0], "GOMODCACHE=" + gv[1], "GOPATH=" + gv[2],
		"README_TEST_REPO=" + repo, "CHUNKBRIDGE_CHUNK_SERVICE=" + srv.grpc,
	}
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "README_TEST_REPO", name == "HOME", name == "PATH", name == "PWD", name == "OLDPWD", name == "CDPATH",
			name == "BASH_ENV", name == "ENV", name == "MAKEFLAGS", name == "MAKELEVEL", name == "MFLAGS",
			strings.HasPrefix(name, "GO"), strings.HasPrefix(name, "XDG_"),
			strings.HasPrefix(name, "CHUNKBRIDGE_"), strings.HasPrefix(name, "CASYNC_"),
			strings.HasPrefix(name, "AWS_"), strings.HasPrefix(name, "CURL"):
			continue
		}
		env = append(env, kv)
	}
	if flags := os.Getenv("GOFLAGS"); flags != "" {
		env = append(env, "GOFLAGS="+flags)
	}

	sh := newReadmeShell(t, work, env)
	ran, skipped := 0, 0
	for _, b := range blocks {
		if b.skip != "" {
			t.Logf("README.md:%d: skipped: %s", b.line-1, b.skip)
			skipped++
			continue
		}
		segs, err := b.segments()
		if err != nil {
			t.Fatal(err)
		}
		ports := readmePorts(t, srv)
		var own *process
		from := sh.offset()
		for _, s := range segs {
			if s.serve != nil {
				own = startBlockServer(t, work, s.serve)
				t.Logf("README.md:%d: started chunkbridge %s (gRPC %s, HTTP %s, casync %s, PMXBCKUP %s)",
					s.line, strings.Join(s.serve, " "), own.grpc, own.http, own.casync, own.pmx)
				ports = readmePorts(t, own)
				continue
			}
			lines := make([]string, len(s.lines))
			for i, l := range s.lines {
				lines[i] = readmeAddr.ReplaceAllStringFunc(l, func(a string) string {
					host, port, _ := net.SplitHostPort(a)
					return net.JoinHostPort(host, ports[port])
				})
			}
			if err := sh.run(s.line, lines); err != nil {
				t.Fatalf("README.md:%d: the block failed: %v\n%s", b.line-1, err, sh.output(from))
			}
		}
		if own != nil {
			own.stop(t)
		}
		out := strings.Split(strings.TrimRight(sh.output(from), "\n"), "\n")
		if len(out) > 20 {
			out = append([]string{fmt.Sprintf("(%d lines before)", len(out)-20)}, out[len(out)-20:]...)
		}
		t.Logf("README.md:%d: ran\n%s", b.line-1, strings.Join(out, "\n"))
		ran++
	}
	t.Logf("%d blocks run, %d skipped", ran, skipped)
}

// startBlockServer starts the server a block runs in the foreground, with
// its flags but on its own store and free loopback ports.
func startBlockServer(t *testing.T, dir string, args []string) *process {
	t.Helper()
	var kept []string
	store := false
	for i := 0; i < len(args); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		switch name {
		case "grpc-listen", "http-listen", "casync-listen", "pmx-listen":
			if !hasValue {
				i++
			}
			continue
		case "store":
			store = true
		}
		kept = append(kept, args[i])
	}
	if !store {
		kept = append(kept, "--store", t.TempDir())
	}
	return startBinaryIn(t, binary, dir, nil, kept...)
}

// readmeShell is one bash that sources the blocks' commands, one part at a
// time, from files whose line numbers are the README's.
type readmeShell struct {
	t      *testing.T
	dir    string
	cmd    *exec.Cmd
	out    *os.File
	next   *os.File // file names for bash (its fd 3)
	done   chan string
	exited chan struct{}
	n      int
}

func newReadmeShell(t *testing.T, dir string, env []string) *readmeShell {
	scripts := t.TempDir()
	prelude := filepath.Join(scripts, "prelude.sh")
	if err := os.WriteFile(prelude, []byte(`set -euo pipefail
trap 'echo "README.md:$LINENO: exit status $?: $BASH_COMMAND" >&2' ERR
make() { command make -C "$README_TEST_REPO" "$@"; }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(scripts, "output"))
	if err != nil {
		t.Fatal(err)
	}
	namesR, namesW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	doneR, doneW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	sh := &readmeShell{t: t, dir: scripts, out: out, next: namesW, done: make(chan string), exited: make(chan struct{})}
	sh.cmd = exec.Command("bash", "--noprofile", "--norc", "-c",
		`source "$0"; while IFS= read -r f <&3; do source "$f"; echo "$f" >&4; done`, prelude)
	sh.cmd.Dir, sh.cmd.Env = dir, env
	sh.cmd.Stdout, sh.cmd.Stderr = out, out
	sh.cmd.ExtraFiles = []*os.File{namesR, doneW}
	sh.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its group is killed at the end
	if err := sh.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	namesR.Close()
	doneW.Close()
	go func() {
		sc := bufio.NewScanner(doneR)
		for sc.Scan() {
			sh.done <- sc.Text()
		}
	}()
	go func() {
		sh.cmd.Wait()
		close(sh.exited)
	}()
	t.Cleanup(func() {
		namesW.Close()
		select {
		case <-sh.exited:
		case <-time.After(10 * time.Second):
		}
		syscall.Kill(-sh.cmd.Process.Pid, syscall.SIGKILL) // anything a block left running
		out.Close()
	})
	return sh
}

// run sources lines, the README's from line first, and waits until bash
// has run them or exited.
func (sh *readmeShell) run(first int, lines []string) error {
	sh.n++
	f := filepath.Join(sh.dir, fmt.Sprintf("part-%d.sh", sh.n))
	script := strings.Repeat("\n", first-1) + strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(sh.next, f); err != nil {
		return fmt.Errorf("bash has gone: %v", err)
	}
	select {
	case <-sh.done:
		return nil
	case <-sh.exited:
		return fmt.Errorf("bash exited with status %d", sh.cmd.ProcessState.ExitCode())
	case <-time.After(2 * time.Minute):
		syscall.Kill(-sh.cmd.Process.Pid, syscall.SIGKILL)
		return fmt.Errorf("still running after 2 minutes")
	}
}

func (sh *readmeShell) offset() int64 {
	n, err := sh.out.Seek(0, io.SeekCurrent)
	if err != nil {
		sh.t.Fatal(err)
	}
	return n
}

// output is what bash printed since offset from.
func (sh *readmeShell) output(from int64) string {
	b, err := os.ReadFile(sh.out.Name())
	if err != nil || int64(len(b)) < from {
		return fmt.Sprintf("(output unreadable: %v)", err)
	}
	return string(b[from:])
}

// grpcurlMain is a stand-in for grpcurl where it is not installed: the
// calls the README makes (-plaintext, -H, -d with one or more JSON
// messages, an address and Service/Method of chunkbridge's API), with
// grpcurl's output (each response as indented JSON; errors as
// "ERROR: Code/Message", exit 1).
func grpcurlMain(args []string) int {
	fs := flag.NewFlagSet("grpcurl", flag.ContinueOnError)
	plaintext := fs.Bool("plaintext", false, "no TLS")
	data := fs.String("d", "", "request messages, JSON")
	var headers []string
	fs.Func("H", "a header, NAME: VALUE", func(s string) error { headers = append(headers, s); return nil })
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if !*plaintext || fs.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "grpcurl (stand-in): want -plaintext [-H H] [-d JSON] ADDR SERVICE/METHOD")
		return 2
	}
	svc, method, _ := strings.Cut(fs.Arg(1), "/")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if err != nil || !ok || sd.Methods().ByName(protoreflect.Name(method)) == nil {
		fmt.Fprintf(os.Stderr, "grpcurl (stand-in): no method %s\n", fs.Arg(1))
		return 1
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	conn, err := grpc.NewClient(fs.Arg(0), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer conn.Close()
	var pairs []string
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		pairs = append(pairs, strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := conn.NewStream(metadata.AppendToOutgoingContext(ctx, pairs...), &grpc.StreamDesc{ServerStreams: md.IsStreamingServer(), ClientStreams: md.IsStreamingClient()},
		"/"+svc+"/"+method)
	if err == nil {
		sent := 0
		dec := json.NewDecoder(strings.NewReader(*data))
		for err == nil && dec.More() {
			var raw json.RawMessage
			if err = dec.Decode(&raw); err != nil {
				break
			}
			m := dynamicpb.NewMessage(md.Input())
			if err = protojson.Unmarshal(raw, m); err == nil {
				err = stream.SendMsg(m)
				sent++
			}
		}
		if err == nil && sent == 0 {
			err = stream.SendMsg(dynamicpb.NewMessage(md.Input()))
		}
		if err == nil {
			err = stream.CloseSend()
		}
		for err == nil {
			m := dynamicpb.NewMessage(md.Output())
			if err = stream.RecvMsg(m); err != nil {
				break
			}
			b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
			fmt.Println(string(b))
		}
		if err == io.EOF {
			return 0
		}
	}
	st := status.Convert(err)
	fmt.Fprintf(os.Stderr, "ERROR:\n  Code: %s\n  Message: %s\n", st.Code(), st.Message())
	return 1
}

func TestREADMEBlocks(t *testing.T) {
	blocks, err := readmeBlocks("text\n```sh\nls\n```\n```\noutput\n```\n<!-- readme-test: skip why -->\n```sh\nkubectl\n```\n")
	if err != nil || len(blocks) != 2 || blocks[0].line != 3 || blocks[0].skip != "" || blocks[1].skip != "why" || blocks[1].lines[0] != "kubectl" {
		t.Fatalf("blocks %+v, err %v", blocks, err)
	}
	for _, bad := range []string{
		"<!-- readme-test: skip -->\n```sh\nls\n```\n",       // no reason
		"<!-- readme-test: skip why -->\n\n```sh\nls\n```\n", // not just above
		"```bash\nls\n```\n",
		"```sh\nls\n",
	} {
		if _, err := readmeBlocks(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	segs, err := readmeBlock{line: 10, lines: []string{"make run &", "a", "bin/chunkbridge serve all --x y \\", "  --z", "b"}}.segments()
	if err != nil || len(segs) != 3 || segs[0].lines[0] != ": # make run: the test's server" ||
		strings.Join(segs[1].serve, " ") != "serve all --x y --z" || segs[1].line != 12 || segs[2].line != 14 || segs[2].lines[0] != "b" {
		t.Fatalf("segments %+v, err %v", segs, err)
	}
}
