package admin_test

import (
	"testing"

	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// The serving rule fails closed: a tenant whose binding object is not in
// the store (deleted by an operator moving data, as docs/tenants.md
// suggests, while the process still routes the tenant to its domain) is
// not thereby served every chunk of a shared domain.
func TestServingRuleWithoutBinding(t *testing.T) {
	e := newEnv(t, memory.New(), admin.Config{})
	ctx := t.Context()
	secret := makeBlobs(61, 2, 1024, sha256Alg)
	e.uploadAs(t, acmeWriter, secret)
	e.mustPutIndexAs(t, acmeWriter, "payroll.caibx", secret)
	e.uploadAs(t, acmeDev, makeBlobs(62, 1, 1024, sha256Alg))
	if _, err := e.chunks.Get(as(ctx, acmeDev), secret[0].id, true); err == nil {
		t.Fatal("acme-dev reads acme's chunk by id alone")
	}
	if err := e.store.Delete(ctx, chunk.BindingPrefix+"acme-dev"); err != nil {
		t.Fatal(err)
	}
	// Any tenant bound meanwhile makes the process read the bindings again.
	e.uploadAs(t, globex, makeBlobs(63, 1, 1024, sha256Alg))
	if _, err := e.chunks.Get(as(ctx, acmeDev), secret[0].id, true); err == nil {
		t.Fatal("acme-dev, its binding gone, reads acme's chunk by id alone: the serving rule failed open")
	}
}
