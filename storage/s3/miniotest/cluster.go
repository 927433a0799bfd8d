package miniotest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/storage/s3"
)

// ClusterSize is the number of nodes of a Cluster: one drive each, so MinIO
// picks 2 data + 2 parity shards. Writes need 3 nodes, reads 2: one node
// may be down for both.
const ClusterSize = 4

// Cluster is a distributed, erasure-coded MinIO: ClusterSize processes on
// 127.0.0.1, each with its own port and drive, every one started with the
// list of all endpoints.
type Cluster struct {
	// Nodes are the processes; clients use Nodes[0] (see Config), so a
	// fault test stops another one.
	Nodes []*Server
}

// StartCluster runs a new cluster for the test and stops it at cleanup.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	c, err := startCluster(t.TempDir())
	checkStart(t, err)
	t.Cleanup(c.Close)
	return c
}

// clusterAttempts bounds the starts with fresh ports: a distributed MinIO
// needs every port before any node binds, and another process can take one
// in between.
const clusterAttempts = 5

func startCluster(dir string) (*Cluster, error) {
	bin, err := Binary()
	if err != nil {
		return nil, missingErr{err}
	}
	var lastErr error
	for attempt := range clusterAttempts {
		ports, err := pickPorts(ClusterSize)
		if err != nil {
			return nil, err
		}
		c, err := newCluster(bin, filepath.Join(dir, "attempt-"+strconv.Itoa(attempt)), ports)
		if err != nil {
			return nil, err
		}
		lastErr = c.start()
		if lastErr == nil {
			return c, nil
		}
		c.Close()
		if !portTaken(lastErr) {
			return nil, lastErr
		}
		slog.Info("MinIO cluster: a port was taken, starting again on new ports", "attempt", attempt+1, "err", lastErr)
	}
	return nil, fmt.Errorf("no free set of %d ports in %d attempts: %w", ClusterSize, clusterAttempts, lastErr)
}

// pickPorts is freePorts; a test replaces it to hand out a taken port.
var pickPorts = freePorts

// newCluster lays out the drives for nodes on the given ports; nothing runs
// yet. Each attempt gets fresh drives: a drive formatted for other
// endpoints would not join.
func newCluster(bin, dir string, ports []int) (*Cluster, error) {
	endpoints := make([]string, ClusterSize)
	c := &Cluster{Nodes: make([]*Server, ClusterSize)}
	for i, port := range ports {
		nodeDir := filepath.Join(dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(filepath.Join(nodeDir, "drive"), 0o755); err != nil {
			return nil, fmt.Errorf("make MinIO drive: %w", err)
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		endpoints[i] = "http://" + addr + filepath.ToSlash(filepath.Join(nodeDir, "drive"))
		c.Nodes[i] = &Server{
			Endpoint: addr, bin: bin, dir: nodeDir,
			env: []string{
				// Inside a container MinIO waits forever for 127.0.0.1 to
				// resolve to a non-loopback address, unless told which
				// endpoint is this process's own.
				"_MINIO_SERVER_LOCAL=" + addr,
				// All drives share the root disk, which MinIO refuses
				// outside CI mode.
				"MINIO_CI_CD=on",
			},
		}
	}
	for _, n := range c.Nodes {
		n.args = endpoints
	}
	return c, nil
}

func (c *Cluster) start() error {
	for _, n := range c.Nodes {
		if err := n.launch(); err != nil {
			return err
		}
	}
	return waitUntil(c.Nodes, func() bool { return c.healthy(c.Nodes) })
}

// healthy reports whether every node sees every other node's drive online
// and answers S3 calls. The maintenance probe answers 200 only if the
// cluster keeps write quorum without the asked node's own drive, that is,
// only if all three others are online as that node sees them.
func (c *Cluster) healthy(nodes []*Server) bool {
	for _, n := range nodes {
		if !n.probe("/minio/health/cluster?maintenance=true") || !n.answersS3() {
			return false
		}
	}
	return true
}

// Kill stops node i with SIGKILL and waits until it is gone.
func (c *Cluster) Kill(i int) { c.Nodes[i].Kill() }

// Restart starts node i again on its port and drive, and waits until the
// whole cluster is healthy again (WaitHealthy) or, while another node is
// still stopped, until node i serves S3 with write quorum. The port cannot
// change in a distributed MinIO: if another process took it meanwhile, that
// is the error.
func (c *Cluster) Restart(i int) error {
	n := c.Nodes[i]
	n.Kill()
	if err := n.launch(); err != nil {
		return err
	}
	var running []*Server
	for _, m := range c.Nodes {
		if m.running() {
			running = append(running, m)
		}
	}
	ready := func() bool { return c.healthy(c.Nodes) }
	if len(running) < len(c.Nodes) {
		ready = func() bool { return n.probe("/minio/health/cluster") && n.answersS3() }
	}
	if err := waitUntil(running, ready); err != nil {
		n.Kill()
		return fmt.Errorf("restart MinIO node %d: %w", i, err)
	}
	return nil
}

// WaitHealthy waits until every node runs and sees all others online, or
// ctx ends.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for _, n := range c.Nodes {
		if !n.running() {
			return fmt.Errorf("MinIO node %s is stopped", n.Endpoint)
		}
	}
	for !c.healthy(c.Nodes) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("MinIO cluster %s not healthy: %w", c, ctx.Err())
		case <-time.After(50 * time.Millisecond): // poll interval of a readiness probe
		}
	}
	return nil
}

func (c *Cluster) String() string {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Endpoint
	}
	return strings.Join(names, ",")
}

// Close stops every node.
func (c *Cluster) Close() {
	for _, n := range c.Nodes {
		n.Kill()
	}
}

// Endpoint is the node clients talk to: Nodes[0].
func (c *Cluster) Endpoint() string { return c.Nodes[0].Endpoint }

// Config returns a store configuration for a fresh bucket of its own,
// through Nodes[0].
func (c *Cluster) Config() s3.Config { return c.Nodes[0].Config() }
