package pmx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// A TLS client that connects and never says a word is dropped after the
// handshake timeout, not kept for the idle timeout (ten minutes) while it
// holds a slot of MaxConns.
func TestSilentTLSClientDroppedAtHandshakeTimeout(t *testing.T) {
	h := newHarness(t, func(s *pmx.Server) {
		s.TLS = selfSigned(t)
		s.HandshakeTimeout = 200 * time.Millisecond
	})
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Well under the write timeout (1m) that would end it without the fix.
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("the server did not close a silent TLS connection: %v", err)
	}
	if n != 0 {
		t.Fatalf("the server sent %d bytes to a client that never started a handshake", n)
	}
}

// Over TLS too, a client beyond MaxConns reads why it was refused: the
// handshake completes before the refusal's session starts.
func TestMaxConnsRefusalOverTLS(t *testing.T) {
	h := newHarness(t, func(s *pmx.Server) {
		s.TLS = selfSigned(t)
		s.MaxConns = 1
	})
	insecure := &tls.Config{InsecureSkipVerify: true} // the test's own certificate
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	first, err := pmxclient.Dial(ctx, h.addr, insecure)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, err = pmxclient.Dial(ctx, h.addr, insecure)
	if !errors.Is(err, pmxclient.ErrBusy) || !strings.Contains(err.Error(), "too many connections") {
		t.Fatalf("TLS Dial beyond MaxConns: %v, want ErrBusy saying too many connections", err)
	}
}
