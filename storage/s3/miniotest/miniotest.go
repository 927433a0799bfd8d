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
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
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
	if err != nil {
		if isMissing(err) {
			skipOrFail(t, err)
		}
		t.Fatalf("start MinIO: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

type missingErr struct{ error }

func isMissing(err error) bool { _, ok := err.(missingErr); return ok }

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
	if sharedErr != nil {
		if isMissing(sharedErr) {
			skipOrFail(t, sharedErr)
		}
		t.Fatalf("start MinIO: %v", sharedErr)
	}
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
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &Server{Endpoint: "127.0.0.1:" + strconv.Itoa(port), bin: bin, dir: dir}
		if lastErr = s.run(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// run starts the process and waits until MinIO reports ready.
func (s *Server) run() error {
	console, err := freePort()
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.Endpoint,
		"--console-address", "127.0.0.1:"+strconv.Itoa(console), filepath.Join(s.dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+AccessKey,
		"MINIO_ROOT_PASSWORD="+SecretKey,
		"MINIO_UPDATE=off",
		"MINIO_BROWSER=off",
	)
	logf, err := os.OpenFile(filepath.Join(s.dir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
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

	deadline := time.Now().Add(60 * time.Second)
	url := "http://" + s.Endpoint + "/minio/health/ready"
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "minio.log"))
			return fmt.Errorf("MinIO exited during start-up: %s", tail(log))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && s.answersS3() {
				return nil
			}
		}
		select {
		case <-exited:
		case <-time.After(50 * time.Millisecond): // poll interval of a readiness probe
		}
	}
	s.Kill()
	return fmt.Errorf("MinIO at %s not ready within 60s", s.Endpoint)
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
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
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
