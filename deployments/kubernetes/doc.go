// Package kubernetes holds no code: its test renders the kustomize
// manifests beside it (base and every overlay) in-process and checks them
// against the deployment rules in README.md.
package kubernetes
