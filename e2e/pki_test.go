package e2e

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/chunkbridge/chunkbridge/internal/testpki"
)

// pmxTLSSecret is the Secret the dev overlay's PMXBCKUP gateway mounts
// (components/pmx-mtls) and expects from outside Git: it holds a private
// key. A dev user makes it with openssl (deployments/kubernetes/README.md);
// the suite makes it here, at test time.
const pmxTLSSecret = "chunkbridge-pmx-tls"

// pbsTLSSecret is the PBS gateway's certificate, made outside Git too.
const pbsTLSSecret = "chunkbridge-pbs-tls"

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

// newPMXPKI makes the certificates and adds the Secrets chunkbridge-pmx-tls
// and chunkbridge-pbs-tls (the PBS gateway's certificate)
// (tls.crt, tls.key, ca.crt, as the README's openssl commands make it) to
// the rendered dev overlay, so that secretMounts mounts it where the
// manifests do. The overlay must reference it without rendering it, and its
// credentials file must name the client certificates' subjects.
func newPMXPKI(t *testing.T, m *manifests) *pmxPKI {
	t.Helper()
	for _, name := range []string{pmxTLSSecret, pbsTLSSecret} {
		if _, ok := m.secrets[name]; ok {
			t.Fatalf("the dev overlay renders Secret %s: it holds a private key and is made outside Git", name)
		}
	}
	creds := m.secretValue(t, "chunkbridge-credentials", "credentials.yaml")
	for _, n := range []pkix.Name{pmxAppendSubject, pmxReadSubject} {
		if !strings.Contains(creds, "cert_subject: "+n.String()+"\n") {
			t.Fatalf("the dev credentials file has no principal with cert_subject %s", n)
		}
	}
	dir := t.TempDir()
	ca := testpki.NewCA(t, "chunkbridge e2e CA")
	p := &pmxPKI{ca: testpki.WriteFile(t, dir, "ca.crt", ca.PEM)}
	srvCert, srvKey := ca.Issue(t, pkix.Name{CommonName: "pmx-gateway"}, x509.ExtKeyUsageServerAuth)
	p.append = clientFiles(t, dir, "dev-pmx-append", ca, pmxAppendSubject)
	p.read = clientFiles(t, dir, "dev-pmx-read", ca, pmxReadSubject)
	p.stranger = clientFiles(t, dir, "stranger", testpki.NewCA(t, "not the gateway's client CA"), pmxAppendSubject)
	secret := &corev1.Secret{Data: map[string][]byte{"tls.crt": srvCert, "tls.key": srvKey, "ca.crt": ca.PEM}}
	secret.Name = pmxTLSSecret
	m.secrets[pmxTLSSecret] = secret
	pbsCert, pbsKey := ca.Issue(t, pkix.Name{CommonName: "pbs-gateway"}, x509.ExtKeyUsageServerAuth)
	pbsSecret := &corev1.Secret{Data: map[string][]byte{"tls.crt": pbsCert, "tls.key": pbsKey}}
	pbsSecret.Name = pbsTLSSecret
	m.secrets[pbsTLSSecret] = pbsSecret
	return p
}

// args are the flags of `chunkbridge pmx` that authenticate as c and
// verify the gateway.
func (p *pmxPKI) args(c pmxClient) []string {
	return []string{"--tls-ca", p.ca, "--cert", c.cert, "--key", c.key}
}

func clientFiles(t *testing.T, dir, name string, ca *testpki.CA, subject pkix.Name) pmxClient {
	t.Helper()
	c, k := ca.Issue(t, subject, x509.ExtKeyUsageClientAuth)
	return pmxClient{cert: testpki.WriteFile(t, dir, name+".crt", c), key: testpki.WriteFile(t, dir, name+".key", k)}
}
