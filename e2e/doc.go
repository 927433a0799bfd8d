// Package e2e holds the end-to-end suite: it runs the project's own
// container images (chunk service, casync gateway, PMXBCKUP gateway, REST
// gateway, MinIO) as separate containers with testcontainers-go, configured
// as the Kubernetes base configures them, and drives them with real clients.
// It is its own module so that testcontainers' dependencies stay out of the
// service's go.mod. Run it with `make e2e`.
package e2e
