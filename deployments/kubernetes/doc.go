// Package kubernetes renders the kustomize manifests beside it (Render);
// its test renders base and every overlay in-process and checks them
// against the deployment rules in README.md.
package kubernetes
