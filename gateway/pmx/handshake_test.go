package pmx_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/gateway/pmx"
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
