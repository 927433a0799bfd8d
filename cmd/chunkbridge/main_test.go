package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// binary is the chunkbridge executable built once for these tests.
var binary string

func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "grpcurl" { // TestREADME's stand-in
		os.Exit(grpcurlMain(os.Args[1:]))
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "chunkbridge-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// No user's config file (profiles) reaches the tests: they make
		// their own.
		os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
		os.Unsetenv("CHUNKBRIDGE_CONFIG")
		os.Unsetenv("CHUNKBRIDGE_PROFILE")
		binary = filepath.Join(dir, "chunkbridge")
		out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build chunkbridge: %v\n%s", err, out)
			return 1
		}
		code := miniotest.RunMain(m)
		printCasyncTable()
		return code
	}()
	os.Exit(code)
}

// process is a running chunkbridge.
type process struct {
	cmd                     *exec.Cmd
	grpc, http, casync, pmx string
	pbs                     string
	exited                  chan struct{}
	mu                      sync.Mutex
	log                     strings.Builder
	logged                  chan struct{} // signalled after each log line
}

// waitLog waits until the process has logged a line containing s, and
// reports whether it did before the process exited or a minute passed.
func (p *process) waitLog(s string) bool {
	timeout := time.After(time.Minute)
	for {
		if strings.Contains(p.logs(), s) {
			return true
		}
		select {
		case <-p.logged:
		case <-p.exited:
			return strings.Contains(p.logs(), s)
		case <-timeout:
			return false
		}
	}
}

func (p *process) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// start runs the binary with args (plus loopback listeners on free ports)
// and returns once it logs its listening addresses.
func start(t testing.TB, env []string, args ...string) *process {
	t.Helper()
	return startBinary(t, binary, env, args...)
}

// startBinary is start with another chunkbridge executable (benchmarks
// compare builds in one run).
func startBinary(t testing.TB, binary string, env []string, args ...string) *process {
	t.Helper()
	return startBinaryIn(t, binary, t.TempDir(), env, args...)
}

// startBinaryIn is startBinary in the working directory dir.
func startBinaryIn(t testing.TB, binary, dir string, env []string, args ...string) *process {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	args = append(args, "--http-listen", "127.0.0.1:0")
	if len(args) > 1 && (args[1] == "all" || args[1] == "chunk") {
		args = append(args, "--grpc-listen", "127.0.0.1:0")
	}
	if len(args) > 1 && (args[1] == "all" || args[1] == "casync-gateway") {
		args = append(args, "--casync-listen", "127.0.0.1:0")
	}
	if len(args) > 1 && (args[1] == "all" || args[1] == "pmx-gateway") {
		args = append(args, "--pmx-listen", "127.0.0.1:0")
	}
	p := &process{cmd: exec.Command(binary, args...), exited: make(chan struct{}), logged: make(chan struct{}, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Dir = dir
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan [5]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			select {
			case p.logged <- struct{}{}:
			default:
			}
			var rec struct{ Msg, GRPC, HTTP, Casync, PMX, PBS string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "listening" {
				listening <- [5]string{rec.GRPC, rec.HTTP, rec.Casync, rec.PMX, rec.PBS}
			}
		}
		p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case addrs := <-listening:
		p.grpc, p.http, p.casync, p.pmx, p.pbs = addrs[0], addrs[1], addrs[2], addrs[3], addrs[4]
	case <-p.exited:
		t.Fatalf("chunkbridge exited before listening:\n%s", p.logs())
	case <-time.After(60 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("chunkbridge did not listen within 60s:\n%s", p.logs())
	}
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop sends SIGTERM and expects a clean exit.
func (p *process) stop(t testing.TB) {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("chunkbridge exited with %d after SIGTERM:\n%s", code, p.logs())
		}
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		t.Errorf("chunkbridge did not stop within 30s of SIGTERM")
	}
}

func (p *process) conn(t testing.TB) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(p.grpc,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitHealth blocks until the health of the whole server is want, using
// the Watch stream (pushes on every change).
func waitHealth(t testing.TB, conn *grpc.ClientConn, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := w.Recv()
		if err != nil {
			t.Fatalf("waiting for health %v: %v", want, err)
		}
		if r.Status == want {
			return
		}
	}
}

func minioEnv(srv *miniotest.Server) []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + miniotest.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + miniotest.SecretKey,
		"CHUNKBRIDGE_S3_ENDPOINT=" + srv.Endpoint,
		"CHUNKBRIDGE_S3_INSECURE=true",
	}
}

func TestStartupFailsClearly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	file := filepath.Join(t.TempDir(), "not-a-dir")
	os.WriteFile(file, nil, 0o644)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "chunk", "--store", file}, file},
		{[]string{"serve", "chunk", "--store", "ftp://x"}, "unsupported scheme"},
		{[]string{"serve", "chunk", "--store", "s3://bucket", "--s3-endpoint", closed, "--s3-insecure"}, "storage unavailable"},
		{[]string{"serve", "chunk", "--grpc-listen", "256.0.0.1:1"}, "--grpc-listen"},
		{[]string{"serve", "nothing"}, "unknown service"},
	} {
		cmd := exec.Command(binary, tc.args...)
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err=%v, output %q does not say %q", tc.args, err, out, tc.want)
		}
	}
}

func readAll(t *testing.T, r io.Reader) string {
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
