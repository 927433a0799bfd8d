package pmx_test

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
)

// Revoking a principal in the credentials file ends its open connection
// at once, not at its idle timeout (auth.Registry.Follow; its own test
// shows that an unchanged principal's session is left alone).
func TestRevocationEndsTheConnection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	tokA, hashA := auth.NewToken()
	_, hashB := auth.NewToken()
	entry := func(name, hash string) string {
		return "  - name: " + name + "\n    role: append\n    token_sha256: " + hash + "\n"
	}
	os.WriteFile(path, []byte("principals:\n"+entry("host-a", hashA)+entry("host-b", hashB)), 0o600)
	reg, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The harness has no TLS: the test sets the credential each new
	// connection (and each later check of it) presents.
	var tok atomic.Pointer[string]
	h := newHarness(t, func(s *pmx.Server) {
		s.Credentials = reg
		s.IdleTimeout = time.Hour
		s.Authenticate = func(*tls.ConnectionState) (auth.Principal, error) { return reg.Token(*tok.Load()) }
	})
	tok.Store(&tokA)
	a := h.dial(t)
	os.WriteFile(path, []byte("principals:\n"+entry("host-b", hashB)), 0o600)
	if !reg.Reload() {
		t.Fatal("the credentials file was not reloaded")
	}
	a.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 1)
	if _, err := a.conn.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("the revoked principal's connection: read %v; want it closed by the server", err)
	}
}
