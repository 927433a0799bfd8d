package kubernetes

import (
	"fmt"
	"path/filepath"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// strict decodes YAML into the typed API structs and fails on unknown or
// duplicate fields, so a misspelt field is an error rather than silently
// dropped (as kubectl apply would on a lenient server).
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// document is one rendered object: its YAML and where it came from.
type document struct {
	id   string // Kind/name as kustomize names it
	yaml []byte
}

// render builds the kustomization in dir in-process, as
// "kubectl kustomize dir" would: default options, load restrictions to
// the root, no plugins.
func render(dir string) ([]document, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), abs)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var docs []document
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", dir, r.CurId(), err)
		}
		docs = append(docs, document{id: r.GetKind() + "/" + r.GetName(), yaml: y})
	}
	return docs, nil
}

// Render builds the kustomization in dir and strictly decodes every object
// into its typed Kubernetes struct. The e2e suite uses it to run the
// containers with exactly the args and env of the manifests.
func Render(dir string) ([]runtime.Object, error) {
	docs, err := render(dir)
	if err != nil {
		return nil, err
	}
	return decode(docs)
}

// decode strictly decodes every document.
func decode(docs []document) ([]runtime.Object, error) {
	objs := make([]runtime.Object, 0, len(docs))
	for _, d := range docs {
		obj, _, err := strict.Decode(d.yaml, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.id, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}
