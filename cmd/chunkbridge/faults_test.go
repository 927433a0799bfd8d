package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// gate holds a byte stream once at bytes have passed, until released: a
// point in the middle of a backup that does not depend on timing. A cut
// gate fails the stream when released, as a client that gives up.
type gate struct {
	at      int64
	cut     bool
	held    chan struct{} // closed when at bytes have passed
	release chan struct{} // closed to open the gate

	mu     sync.Mutex
	passed int64
}

func newGate(at int64, release chan struct{}, cut bool) *gate {
	return &gate{at: at, cut: cut, held: make(chan struct{}), release: release}
}

var errCut = errors.New("the client gave up at the gate")

// allow returns how many of n bytes may pass now, blocking at the gate
// point until release.
func (g *gate) allow(n int) (int, error) {
	g.mu.Lock()
	left := g.at - g.passed
	g.mu.Unlock()
	if left > 0 {
		return int(min(int64(n), left)), nil
	}
	<-g.release
	if g.cut {
		return 0, errCut
	}
	return n, nil
}

func (g *gate) passedBytes(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	before := g.passed
	g.passed += int64(n)
	if before < g.at && g.passed >= g.at {
		close(g.held)
	}
}

// gatedReader passes r's bytes through a gate.
type gatedReader struct {
	r io.Reader
	g *gate
}

func (r *gatedReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	allowed, err := r.g.allow(len(p))
	if err != nil {
		return 0, err
	}
	n, err := r.r.Read(p[:allowed])
	r.g.passedBytes(n)
	return n, err
}

// gatedRelay relays connections on a loopback port to addr, passing what
// the client sends through g: a casync push paused mid-upload. A cut gate
// closes both connections, as a client that dies.
func gatedRelay(t *testing.T, addr string, g *gate) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	// At cleanup, connections still open (a test that failed early) are
	// cut, so that no relay goroutine outlives the test.
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue // casync reports the relay's refusal
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				if _, err := io.Copy(s, &gatedReader{c, g}); errors.Is(err, errCut) {
					s.Close()
					c.Close()
					return
				}
				s.(*net.TCPConn).CloseWrite()
			}()
			go func() {
				defer wg.Done()
				io.Copy(c, s)
				c.Close()
			}()
		}
	}()
	return l.Addr().String()
}

// faultBackup is one backup of the fault test and what became of it.
type faultBackup struct {
	proto string // "casync" or "pmx"
	name  string // casync index name or PMXBCKUP snapshot file path
	data  []byte
	gate  *gate // nil: runs freely
	run   func(in io.Reader) error
	done  chan struct{}
	err   error // nil: acknowledged
}

func (b *faultBackup) String() string { return b.proto + " backup " + b.name }

// start runs the backup in the background, through its gate if it has one.
func (b *faultBackup) start() {
	b.done = make(chan struct{})
	var in io.Reader = bytes.NewReader(b.data)
	if b.gate != nil {
		in = &gatedReader{in, b.gate}
	}
	go func() {
		defer close(b.done)
		b.err = b.run(in)
	}()
}

// A 4-node MinIO loses a node in the middle of concurrent backups over
// casync (stock casync, its connection to the TCP gateway through a gated
// relay) and PMXBCKUP (pmxclient, its input through a gated reader). Gates hold four backups at half their data, so that they
// straddle the fault deterministically; two more run freely and race it.
//
//   - Node 3 dies once all gated backups are held. Writes keep quorum (3 of
//     4): two gated backups resume and must be acknowledged; the two others
//     are cut off by their client and must leave no index or snapshot, so
//     that, run again whole, they succeed.
//   - Every acknowledged backup restores byte-identical and verify is
//     clean, once node 3 is back, and again with node 1 down (reads need
//     2 of 4).
//
// Losing write quorum (two nodes) is left out: MinIO then holds PUTs for
// over a minute instead of refusing them.
func TestMinIONodeDiesDuringBackups(t *testing.T) {
	needCasync(t)
	cluster := miniotest.StartCluster(t)
	// Clients use node 0; the faults hit the others, as a load balancer
	// would route around a dead node but not a dead entry point.
	p := start(t, minioEnv(cluster.Nodes[0]), "serve", "all", "--store", "s3://"+miniotest.NewBucketName(), "--health-interval", "100ms")
	conn := p.conn(t)
	waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// Every input starts with the same MiB, so the protocols deduplicate
	// against each other (casync --digest=sha256 and PMXBCKUP's dynamic
	// chunker cut alike) while the node dies. The free backups are larger,
	// so that they are likely still uploading at the fault.
	shared := randomBytes(1000, 1<<20)
	const unique = 2 << 20
	release := make(chan struct{})
	snapTime := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	const free, resumed, cut = "free", "resumed", "cut"
	var backups []*faultBackup
	for i, kind := range []string{free, resumed, cut, free, resumed, cut} {
		b := &faultBackup{proto: "casync"}
		if i >= 3 {
			b.proto = "pmx"
		}
		size := unique
		if kind == free {
			size = 2 * unique
		} else {
			b.gate = newGate(int64(len(shared))+unique/2, release, kind == cut)
		}
		b.data = append(slices.Clone(shared), randomBytes(uint64(1001+i), size)...)
		// Everything that may call t.Fatal is set up here, on the test's
		// goroutine; the backup goroutines only run.
		switch b.proto {
		case "casync":
			b.name = fmt.Sprintf("faults/c%d.caibx", i)
			direct, src := tcpCasync(t, p), writeFile(t, b.data)
			relayed := direct
			if b.gate != nil {
				relayed = tcpCasyncAt(t, gatedRelay(t, p.casync, b.gate))
			}
			b.run = func(io.Reader) error { // casync reads src itself
				c := direct
				if b.gate != nil {
					c = relayed // the relay applies the gate
				}
				_, err := c.try("make", "--digest=sha256", "srv:/"+b.name, src)
				return err
			}
		case "pmx":
			id := fmt.Sprintf("faults-%d", i)
			b.name = fmt.Sprintf("host/%s/%s/data.didx", id, snapTime.Format(time.RFC3339))
			b.run = func(in io.Reader) error {
				path, err := backupOverPMX(ctx, p.pmx, pmxclient.BackupOptions{
					Type: pmxproto.BackupHost, ID: id, Name: "data", Input: in, Size: int64(len(b.data)), Time: snapTime,
				})
				if err == nil && path != b.name {
					return fmt.Errorf("committed as %s, want %s", path, b.name)
				}
				return err
			}
		}
		backups = append(backups, b)
	}
	// Cleanups run last first: this one, before the relays', opens gates
	// still shut when the test fails early.
	openGates := sync.OnceFunc(func() { close(release) })
	t.Cleanup(openGates)
	for _, b := range backups {
		b.start()
	}
	for _, b := range backups {
		if b.gate == nil {
			continue
		}
		select {
		case <-b.gate.held:
		case <-b.done:
			t.Fatalf("%s ended before its gate: %v", b, b.err)
		}
	}

	cluster.Kill(3)
	running := 0
	for _, b := range backups {
		select {
		case <-b.done:
		default:
			running++
		}
	}
	t.Logf("MinIO node 3 killed with four backups held mid-upload and %d of the two free ones running", running-4)
	openGates()
	var again []*faultBackup
	for _, b := range backups {
		<-b.done
		t.Logf("%s: %v", b, b.err)
		switch {
		case b.gate == nil: // acknowledged or not, both are fine
		case b.gate.cut:
			if b.err == nil {
				t.Errorf("%s was acknowledged though its client gave up", b)
			}
			again = append(again, b)
		case b.err != nil:
			t.Errorf("%s, resumed with 3 of 4 nodes, failed: %v", b, b.err)
		}
	}
	checkPublished(t, conn, backups)

	// The backups cut off, again and whole, still without node 3: they left
	// nothing in the way (PMXBCKUP refuses an existing snapshot).
	for _, b := range again {
		b.gate = nil
		b.start()
	}
	for _, b := range again {
		<-b.done
		if b.err != nil {
			t.Errorf("%s, run again: %v", b, b.err)
		}
	}
	if err := cluster.Restart(3); err != nil {
		t.Fatal(err)
	}
	checkPublished(t, conn, backups)
	restoreAll(t, ctx, p, backups)
	verifyClean(t, p)

	// Reads with another node down.
	cluster.Kill(1)
	restoreAll(t, ctx, p, backups)
	verifyClean(t, p)
	if err := cluster.Restart(1); err != nil {
		t.Fatal(err)
	}
}

// backupOverPMX runs one PMXBCKUP backup on its own connection and returns the
// snapshot file's path.
func backupOverPMX(ctx context.Context, addr string, opts pmxclient.BackupOptions) (string, error) {
	c, err := pmxclient.Dial(ctx, addr, nil)
	if err != nil {
		return "", fmt.Errorf("dial PMXBCKUP %s: %w", addr, err)
	}
	defer c.Close()
	sum, err := pmxclient.Backup(ctx, c, opts)
	if err != nil {
		return "", err
	}
	return sum.Path, nil
}

// checkPublished compares the catalog with the backups: exactly the
// acknowledged ones are published.
func checkPublished(t *testing.T, conn *grpc.ClientConn, backups []*faultBackup) {
	t.Helper()
	cat := chunkbridgev1.NewCatalogServiceClient(conn)
	published := map[string]bool{}
	idx, err := cat.ListIndexes(t.Context(), &chunkbridgev1.ListIndexesRequest{Prefix: "faults/"})
	if err != nil {
		t.Fatalf("list indexes: %v", err)
	}
	for _, i := range idx.Indexes {
		published[i.Name] = true
	}
	snaps, err := cat.ListSnapshots(t.Context(), &chunkbridgev1.ListSnapshotsRequest{})
	if err != nil {
		t.Fatalf("list snapshots: %v", err)
	}
	for _, s := range snaps.Snapshots {
		for _, f := range s.Files {
			published[f.Path] = true
		}
	}
	for _, b := range backups {
		switch {
		case b.err == nil && !published[b.name]:
			t.Errorf("acknowledged %s backup %s is not published", b.proto, b.name)
		case b.err != nil && published[b.name]:
			t.Errorf("failed %s backup %s left a published %s", b.proto, b.name, b.name)
		}
		delete(published, b.name)
	}
	for name := range published {
		t.Errorf("published %s belongs to no backup", name)
	}
}

// restoreAll restores every acknowledged backup concurrently, over its own
// protocol, and compares the bytes.
func restoreAll(t *testing.T, ctx context.Context, p *process, backups []*faultBackup) {
	t.Helper()
	var wg sync.WaitGroup
	for _, b := range backups {
		if b.err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := restoreBackup(t, ctx, p, b)
			switch {
			case err != nil:
				t.Errorf("restore %s backup %s: %v", b.proto, b.name, err)
			case !bytes.Equal(got, b.data):
				t.Errorf("%s backup %s restored %d bytes that differ from the %d backed up", b.proto, b.name, len(got), len(b.data))
			}
		}()
	}
	wg.Wait()
}

func restoreBackup(t *testing.T, ctx context.Context, p *process, b *faultBackup) ([]byte, error) {
	if b.proto == "casync" {
		out := filepath.Join(t.TempDir(), "out")
		if _, err := tcpCasync(t, p).try("extract", "srv:/"+b.name, out); err != nil {
			return nil, err
		}
		return os.ReadFile(out)
	}
	c, err := pmxclient.Dial(ctx, p.pmx, nil)
	if err != nil {
		return nil, fmt.Errorf("dial PMXBCKUP %s: %w", p.pmx, err)
	}
	defer c.Close()
	var buf bytes.Buffer
	_, err = pmxclient.Restore(ctx, c, b.name, &buf, nil)
	return buf.Bytes(), err
}

func verifyClean(t *testing.T, p *process) {
	t.Helper()
	out, code := runCLI(t, "verify", "--chunk-service", p.grpc)
	if code != 0 || !strings.Contains(out, "corrupt 0, missing 0, unreadable 0, unavailable 0, corrupt index files 0") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
}
