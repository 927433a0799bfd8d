package miniotest

import (
	"context"
	"net"
	"testing"
	"time"
)

// A node that cannot bind its port fails the whole attempt, and the
// cluster starts again on new ports: the first set handed out includes a
// port another listener holds.
func TestClusterRetriesATakenPort(t *testing.T) {
	if _, err := Binary(); err != nil {
		skipOrFail(t, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().(*net.TCPAddr).Port
	var calls int
	pickPorts = func(n int) ([]int, error) {
		calls++
		ports, err := freePorts(n)
		if calls == 1 && err == nil {
			ports[2] = taken
		}
		return ports, err
	}
	defer func() { pickPorts = freePorts }()

	c := StartCluster(t)
	if calls != 2 {
		t.Fatalf("the cluster started after %d port picks, want 2 (the first had a taken port)", calls)
	}
	for _, n := range c.Nodes {
		if n.Endpoint == l.Addr().String() {
			t.Fatalf("a node runs on the taken port %s", n.Endpoint)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}
