package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
)

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chunkbridge test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

// The services as separate processes, as in Kubernetes: the chunk service
// over TLS with a token, and a REST gateway and a casync gateway that reach
// it with the CA and the same token.
func TestSeparateServicesWithTokenAndTLS(t *testing.T) {
	needCasync(t)
	cert, key := selfSigned(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	const token = "s3cr3t-token-for-the-test"
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)

	chunkSvc := start(t, nil, "serve", "chunk", "--store", t.TempDir(), "--auth-token-file", tokenFile, "--tls-cert", cert, "--tls-key", key)
	client := []string{"--chunk-service", chunkSvc.grpc, "--chunk-service-tls", "--chunk-service-ca", cert, "--auth-token-file", tokenFile}
	restGW := start(t, nil, append([]string{"serve", "rest-gateway"}, client...)...)
	casyncGW := start(t, nil, append([]string{"serve", "casync-gateway"}, client...)...)

	// gRPC without the token is refused; health is open.
	creds, _ := credentials.NewClientTLSFromFile(cert, "")
	conn, err := grpc.NewClient(chunkSvc.grpc, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = chunkbridgev1.NewAdminServiceClient(conn).GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("GetStats without a token = %v, want Unauthenticated", err)
	}

	// casync through the separate gateway, which with a token requires it
	// in the preamble too.
	c := tcpCasync(t, casyncGW)
	c.env = append(c.env, "CHUNKBRIDGE_TOKEN="+token)
	src := blob(t, 9, 2<<20)
	c.run("make", "srv:/sep/x.caibx", src)
	out := filepath.Join(t.TempDir(), "out")
	c.run("extract", "srv:/sep/x.caibx", out)
	sameFile(t, src, out)

	// REST: 401 without the token, 200 with it; health and metrics open.
	do := func(path, auth string) int {
		req, _ := http.NewRequest("GET", "http://"+restGW.http+path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/v1/indexes", "", 401},
		{"/v1/indexes", "Bearer wrong-token-of-enough-length", 401},
		{"/v1/indexes", "Bearer " + token, 200},
		{"/v1/indexes/sep/x.caibx", "Bearer " + token, 200},
		{"/casync/indexes/sep/x.caibx", "", 401},
		{"/openapi.json", "", 401},
		{"/healthz", "", 200},
		{"/readyz", "", 200},
		{"/metrics", "", 200},
	} {
		if got := do(tc.path, tc.auth); got != tc.want {
			t.Errorf("GET %s (auth %q) = %d, want %d", tc.path, tc.auth, got, tc.want)
		}
	}
}
