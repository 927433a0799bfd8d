package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// pmxTLSSecret is the Secret the dev overlay's PMXBCKUP gateway mounts
// (components/pmx-mtls) and expects from outside Git: it holds a private
// key. A dev user makes it with openssl (deployments/kubernetes/README.md);
// the suite makes it here, at test time.
const pmxTLSSecret = "chunkbridge-pmx-tls"

// The dev overlay's PMXBCKUP principals (overlays/dev/credentials.yaml):
// their cert_subject is the subject of the certificates signed here.
var (
	pmxAppendSubject = pkix.Name{CommonName: "dev-pmx-append", Organization: []string{"chunkbridge-dev"}}
	pmxReadSubject   = pkix.Name{CommonName: "dev-pmx-read", Organization: []string{"chunkbridge-dev"}}
)

// pmxClient is a client certificate and its key, as files for
// `chunkbridge pmx --cert --key`.
type pmxClient struct{ cert, key string }

// pmxPKI is a throwaway CA, the gateway's certificate for 127.0.0.1 and
// localhost, and the dev principals' client certificates.
type pmxPKI struct {
	ca           string // PEM file: chunkbridge pmx --tls-ca
	append, read pmxClient
	stranger     pmxClient // signed by another CA, with dev-pmx-append's subject
}

// newPMXPKI makes the certificates and adds the Secret chunkbridge-pmx-tls
// (tls.crt, tls.key, ca.crt, as the README's openssl commands make it) to
// the rendered dev overlay, so that secretMounts mounts it where the
// manifests do. The overlay must reference it without rendering it, and its
// credentials file must name the client certificates' subjects.
func newPMXPKI(t *testing.T, m *manifests) *pmxPKI {
	t.Helper()
	if _, ok := m.secrets[pmxTLSSecret]; ok {
		t.Fatalf("the dev overlay renders Secret %s: it holds a private key and is made outside Git", pmxTLSSecret)
	}
	creds := m.secretValue(t, "chunkbridge-credentials", "credentials.yaml")
	for _, n := range []pkix.Name{pmxAppendSubject, pmxReadSubject} {
		if !strings.Contains(creds, "cert_subject: "+n.String()+"\n") {
			t.Fatalf("the dev credentials file has no principal with cert_subject %s", n)
		}
	}
	dir := t.TempDir()
	caKey, caCert, caPEM := newCA(t, "chunkbridge e2e CA")
	p := &pmxPKI{ca: writeFile(t, dir, "ca.crt", caPEM)}
	srvCert, srvKey := issue(t, caCert, caKey, pkix.Name{CommonName: "pmx-gateway"}, x509.ExtKeyUsageServerAuth)
	p.append = clientFiles(t, dir, "dev-pmx-append", caCert, caKey, pmxAppendSubject)
	p.read = clientFiles(t, dir, "dev-pmx-read", caCert, caKey, pmxReadSubject)
	otherKey, otherCert, _ := newCA(t, "not the gateway's client CA")
	p.stranger = clientFiles(t, dir, "stranger", otherCert, otherKey, pmxAppendSubject)
	secret := &corev1.Secret{Data: map[string][]byte{"tls.crt": srvCert, "tls.key": srvKey, "ca.crt": caPEM}}
	secret.Name = pmxTLSSecret
	m.secrets[pmxTLSSecret] = secret
	return p
}

// args are the flags of `chunkbridge pmx` that authenticate as c and
// verify the gateway.
func (p *pmxPKI) args(c pmxClient) []string {
	return []string{"--tls-ca", p.ca, "--cert", c.cert, "--key", c.key}
}

func newCA(t *testing.T, cn string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// issue signs a leaf certificate for subject with usage; a server one is
// for 127.0.0.1 and localhost, where the suite reaches the gateway.
func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, subject pkix.Name, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func clientFiles(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, subject pkix.Name) pmxClient {
	t.Helper()
	c, k := issue(t, ca, caKey, subject, x509.ExtKeyUsageClientAuth)
	return pmxClient{cert: writeFile(t, dir, name+".crt", c), key: writeFile(t, dir, name+".key", k)}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
