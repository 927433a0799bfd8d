package kubernetes

import (
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
)

// renderObjects renders dir and decodes it, failing the test on any error.
func renderObjects(t testing.TB, dir string) []runtime.Object {
	t.Helper()
	docs, err := render(dir)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(docs)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return objs
}
