// Package miniotest runs a real MinIO server for tests: the pinned binary
// that `make tools` builds into .tmp/bin, as a child process on 127.0.0.1
// with a random port and a temporary data directory.
//
// When the binary is missing a test is skipped with instructions, except in
// CI (CI=true), where that is a failure.
package miniotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/chunkbridge/chunkbridge/storage/s3"
)

// Credentials of every test server.
const (
	AccessKey = "chunkbridge"
	SecretKey = "chunkbridge-secret"
)

// Server is one MinIO process.
type Server struct {
	// Endpoint is 127.0.0.1:port.
	Endpoint string

	bin, dir string
	// args follow `server --address Endpoint`; env adds to the environment.
	args, env []string
	mu        sync.Mutex
	cmd       *exec.Cmd
	exited    chan struct{}
}

// Binary finds the MinIO executable: $CHUNKBRIDGE_MINIO_BIN, or .tmp/bin/minio
// at the module root.
func Binary() (string, error) {
	if p := os.Getenv("CHUNKBRIDGE_MINIO_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".tmp", "bin", "minio")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("MinIO is not built at %s: run `make tools` (or set CHUNKBRIDGE_MINIO_BIN)", p)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory; set CHUNKBRIDGE_MINIO_BIN")
		}
		dir = parent
	}
}

// Start runs a new server for the test and stops it at cleanup.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := start(t.TempDir())
	checkStart(t, err)
	t.Cleanup(s.Close)
	return s
}

type missingErr struct{ error }

func isMissing(err error) bool { _, ok := err.(missingErr); return ok }

// checkStart skips or fails the test if MinIO did not start.
func checkStart(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if isMissing(err) {
		skipOrFail(t, err)
	}
	t.Fatalf("start MinIO: %v", err)
}

func skipOrFail(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI needs a real MinIO: %v", err)
	}
	t.Skipf("skipping: %v", err)
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
	sharedDir  string
)

// Shared returns one server for the whole test binary, started on first use.
// Packages that use it stop it from TestMain with RunMain.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "chunkbridge-minio-")
		if sharedErr == nil {
			shared, sharedErr = start(sharedDir)
		}
	})
	checkStart(t, sharedErr)
	return shared
}

// RunMain runs the tests and then stops the shared server.
func RunMain(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.Close()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	return code
}

func start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, missingErr{err}
	}
	var lastErr error
	for range 5 { // a picked port can be taken before MinIO binds it
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		s := &Server{
			Endpoint: "127.0.0.1:" + strconv.Itoa(ports[0]), bin: bin, dir: dir,
			args: []string{"--console-address", "127.0.0.1:" + strconv.Itoa(ports[1]), filepath.Join(dir, "data")},
		}
		if lastErr = s.run(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All are held open together, so that the kernel does not hand out one twice.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// run starts the process and waits until MinIO reports ready.
func (s *Server) run() error {
	if err := s.launch(); err != nil {
		return err
	}
	err := waitUntil([]*Server{s}, func() bool {
		return s.probe("/minio/health/ready") && s.answersS3()
	})
	if err != nil {
		s.Kill()
	}
	return err
}

// launch starts the process with the server's arguments and environment
// and returns at once.
func (s *Server) launch() error {
	cmd := exec.Command(s.bin, append([]string{"server", "--quiet", "--address", s.Endpoint}, s.args...)...)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey,
		"MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_UPDATE=off",
		"MINIO_BROWSER=off",
	)
	cmd.Env = append(cmd.Env, s.env...)
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open MinIO log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary even if cleanup never runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return nil
}

func (s *Server) logPath() string { return filepath.Join(s.dir, "minio.log") }

// exitedErr is a server that exited while it was awaited.
type exitedErr struct {
	endpoint, log string
}

func (e exitedErr) Error() string {
	return fmt.Sprintf("MinIO at %s exited during start-up: %s", e.endpoint, e.log)
}

// portTaken reports whether a server exited because its address was in use.
func portTaken(err error) bool {
	var e exitedErr
	return errors.As(err, &e) && strings.Contains(e.log, "already in use")
}

// startTimeout bounds one start of a server or a cluster.
const startTimeout = 60 * time.Second

// waitUntil polls ready until it holds, one of the servers exits, or
// startTimeout passes.
func waitUntil(servers []*Server, ready func() bool) error {
	deadline := time.Now().Add(startTimeout)
	exited := make(chan *Server, len(servers))
	stop := make(chan struct{})
	defer close(stop)
	for _, s := range servers {
		s.mu.Lock()
		ch := s.exited
		s.mu.Unlock()
		if ch == nil {
			return fmt.Errorf("MinIO at %s is not running", s.Endpoint)
		}
		go func() {
			select {
			case <-ch:
				exited <- s
			case <-stop:
			}
		}()
	}
	for {
		select {
		case s := <-exited:
			return s.exitErr()
		default:
		}
		if ready() {
			return nil
		}
		if !time.Now().Before(deadline) {
			names := make([]string, len(servers))
			for i, s := range servers {
				names[i] = s.Endpoint
			}
			return fmt.Errorf("MinIO at %s not ready within %v", strings.Join(names, ", "), startTimeout)
		}
		select {
		case s := <-exited:
			return s.exitErr()
		case <-time.After(50 * time.Millisecond): // poll interval of a readiness probe
		}
	}
}

func (s *Server) exitErr() error {
	log, _ := os.ReadFile(s.logPath())
	return exitedErr{s.Endpoint, tail(log)}
}

// probe reports whether a GET of a health path answers 200.
func (s *Server) probe(path string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.Endpoint+path, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// answersS3 reports whether a signed S3 call succeeds: the health probe can
// say ready while S3 calls still fail with XMinioServerNotInitialized.
func (s *Server) answersS3() bool {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), MaxRetries: 1})
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = c.ListBuckets(ctx)
	return err == nil
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Kill stops the server abruptly (SIGKILL), as a crash or network loss would,
// and waits until the process is gone.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd, s.exited = nil, nil // a stopped server is not awaited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Restart starts the server again on the same address and data directory.
func (s *Server) Restart() error {
	s.Kill()
	return s.run()
}

// Close stops the server.
func (s *Server) Close() { s.Kill() }

// Config returns a store configuration for a fresh bucket of its own.
func (s *Server) Config() s3.Config {
	return s3.Config{
		Endpoint:  s.Endpoint,
		Bucket:    NewBucketName(),
		Insecure:  true,
		AccessKey: AccessKey,
		SecretKey: SecretKey,
	}
}

// NewBucketName returns a random valid bucket name.
func NewBucketName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "test-" + hex.EncodeToString(b[:])
}

// SharedStore opens a store on a fresh bucket of the shared server, closed
// when the test ends. It skips in -short mode.
func SharedStore(t testing.TB) *s3.Store {
	t.Helper()
	if testing.Short() {
		t.Skip("needs MinIO")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := s3.Open(ctx, Shared(t).Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
