package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	binenc "encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
)

// The soak's length, both topologies together: -soak=10m, or
// CHUNKBRIDGE_SOAK=10m; 60s by default, for CI.
var soakFlag = flag.Duration("soak", 0, "how long TestReplicaSoak runs its workload, both topologies together (default $CHUNKBRIDGE_SOAK, else 60s)")

// soakSeed seeds every byte the soak backs up.
const soakSeed = 20261130

// Data of the soak: backups are concatenations of segments from one pool,
// so that they share most of their chunks, plus a short tail of their own.
const (
	soakSegments    = 128
	soakSegmentSize = 256 << 10
	soakClients     = 4
	// soakLive bounds the acknowledged backups alive at once: above it,
	// a client round that prunes nothing deletes one. It keeps marks short and GC frequent.
	soakLive = 24
)

func soakDuration(t *testing.T) time.Duration {
	if *soakFlag > 0 {
		return *soakFlag
	}
	if s := os.Getenv("CHUNKBRIDGE_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("CHUNKBRIDGE_SOAK=%q: want a duration such as 10m", s)
		}
		return d
	}
	return 60 * time.Second
}

// Two and three `serve chunk` processes on one MinIO bucket, with the
// gateways spread over them: a casync gateway in front of replica 1, a
// PMXBCKUP gateway in front of replica 2, and with three replicas, a
// replica 3 that serves only administration. Four clients back up over
// both protocols (real casync through the TCP gateway, and pmxclient),
// reusing the chunks of earlier backups, including those of backups just
// deleted or pruned whose chunks nothing references any more, while GC with
// grace 0 runs back to back on the replicas in turn and a second GC loop
// contends for its lock from other replicas. Clients delete backups and
// prune snapshot groups through every replica. Each acknowledged backup is
// recorded with its content; restores check some during the run and every
// one not deliberately removed at the end, byte for byte. Refused commits
// are counted. At the end the catalog must list exactly the live backups,
// and verify must find the store clean.
func TestReplicaSoak(t *testing.T) {
	needCasync(t)
	total := soakDuration(t)
	t.Logf("soak: seed %d, workload %s (half with two replicas, half with three)", soakSeed, total)
	segs := soakPool(soakSeed)
	var all []*soakStats
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d-replicas", n), func(t *testing.T) {
			s := runSoak(t, startSoakCluster(t, n), segs, total/2)
			all = append(all, s)
		})
	}
	if len(all) == 2 {
		var sum soakStats
		for _, s := range all {
			sum.add(s)
		}
		t.Logf("soak total (seed %d, %s): %s", soakSeed, total, sum.String())
	}
}

// soakCluster is the replicas on one bucket and the gateways in front of
// them.
type soakCluster struct {
	replicas []*process
	catalogs []chunkbridgev1.CatalogServiceClient
	casyncGW *process // in front of replica 1
	pmxGW    *process // in front of replica 2
}

func startSoakCluster(t *testing.T, n int) *soakCluster {
	t.Helper()
	srv := miniotest.Shared(t)
	store := "s3://" + miniotest.NewBucketName()
	c := &soakCluster{}
	for range n {
		p := start(t, minioEnv(srv), "serve", "chunk", "--store", store)
		conn := p.conn(t)
		waitHealth(t, conn, healthpb.HealthCheckResponse_SERVING)
		c.replicas = append(c.replicas, p)
		c.catalogs = append(c.catalogs, chunkbridgev1.NewCatalogServiceClient(conn))
	}
	c.casyncGW = start(t, nil, "serve", "casync-gateway", "--chunk-service", c.replicas[0].grpc)
	c.pmxGW = start(t, nil, "serve", "pmx-gateway", "--chunk-service", c.replicas[1].grpc)
	t.Logf("%d replicas on %s; casync gateway %s -> replica 1 (%s); PMXBCKUP gateway %s -> replica 2 (%s)",
		n, store, c.casyncGW.casync, c.replicas[0].grpc, c.pmxGW.pmx, c.replicas[1].grpc)
	return c
}

// soakPool returns the segments backups are made of.
func soakPool(seed uint64) [][]byte {
	segs := make([][]byte, soakSegments)
	for i := range segs {
		segs[i] = pseudoRandom(seed, uint64(i), soakSegmentSize)
	}
	return segs
}

func pseudoRandom(seed, stream uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, stream))
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binenc.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n]
}

// soakRecipe says what a backup holds: segments of the pool, then a tail
// of its own.
type soakRecipe struct {
	segs    []int
	reuses  bool // some segments are those of removed backups
	tail    uint64
	tailLen int
}

func (r soakRecipe) data(pool [][]byte) []byte {
	out := make([]byte, 0, len(r.segs)*soakSegmentSize+r.tailLen)
	for _, s := range r.segs {
		out = append(out, pool[s]...)
	}
	return append(out, pseudoRandom(soakSeed, 1<<32+r.tail, r.tailLen)...)
}

// soakBackup is an acknowledged backup.
type soakBackup struct {
	proto  string // "pmx" or "casync"
	name   string // snapshot file path, or casync index name
	dir    string // pmx: the snapshot, type/id/time
	group  string // what its deletion and checks lock
	recipe soakRecipe
	size   int
	digest string // SHA-256 of the content
	gone   bool   // deleted or pruned on purpose
}

type soakStats struct {
	pmxAcked, casyncAcked, bytesAcked      atomic.Int64
	reusing                                atomic.Int64 // acknowledged with segments of removed backups
	refusedGC, refusedMissing, gaveUp      atomic.Int64
	deleted, pruneRuns, pruned             atomic.Int64
	gcRuns, gcBusy, chunksDeleted, gcBytes atomic.Int64
	gcProtected, gcMissing, gcNanos        atomic.Int64
	checkedDuring, checkedEnd, lost        atomic.Int64
}

func (s *soakStats) add(o *soakStats) {
	for _, p := range [][2]*atomic.Int64{
		{&s.pmxAcked, &o.pmxAcked}, {&s.casyncAcked, &o.casyncAcked}, {&s.bytesAcked, &o.bytesAcked}, {&s.reusing, &o.reusing},
		{&s.refusedGC, &o.refusedGC}, {&s.refusedMissing, &o.refusedMissing}, {&s.gaveUp, &o.gaveUp},
		{&s.deleted, &o.deleted}, {&s.pruneRuns, &o.pruneRuns}, {&s.pruned, &o.pruned},
		{&s.gcRuns, &o.gcRuns}, {&s.gcBusy, &o.gcBusy}, {&s.chunksDeleted, &o.chunksDeleted}, {&s.gcBytes, &o.gcBytes},
		{&s.gcProtected, &o.gcProtected}, {&s.gcMissing, &o.gcMissing}, {&s.gcNanos, &o.gcNanos},
		{&s.checkedDuring, &o.checkedDuring}, {&s.checkedEnd, &o.checkedEnd}, {&s.lost, &o.lost},
	} {
		p[0].Add(p[1].Load())
	}
}

func (s *soakStats) String() string {
	return fmt.Sprintf("backups acknowledged %d (PMXBCKUP %d, casync %d; %s; %d reusing data of removed backups), refused %d (GC deleted a chunk during the commit %d, a chunk missing at the check %d), given up after 3 refusals %d; "+
		"deleted %d, prune runs %d removing %d snapshots; GC runs %d (mean %s; refused, lock held elsewhere: %d), chunks deleted %d (%s), chunks protected by registrations %d, referenced chunks missing %d; "+
		"restores checked %d during + %d at the end; lost %d",
		s.pmxAcked.Load()+s.casyncAcked.Load(), s.pmxAcked.Load(), s.casyncAcked.Load(), pmxclient.FormatSize(s.bytesAcked.Load()), s.reusing.Load(),
		s.refusedGC.Load()+s.refusedMissing.Load(), s.refusedGC.Load(), s.refusedMissing.Load(), s.gaveUp.Load(),
		s.deleted.Load(), s.pruneRuns.Load(), s.pruned.Load(), s.gcRuns.Load(), s.meanGC(), s.gcBusy.Load(), s.chunksDeleted.Load(), pmxclient.FormatSize(s.gcBytes.Load()),
		s.gcProtected.Load(), s.gcMissing.Load(), s.checkedDuring.Load(), s.checkedEnd.Load(), s.lost.Load())
}

func (s *soakStats) meanGC() time.Duration {
	if n := s.gcRuns.Load(); n > 0 {
		return (time.Duration(s.gcNanos.Load()) / time.Duration(n)).Round(time.Millisecond)
	}
	return 0
}

type soakRun struct {
	t     *testing.T
	c     *soakCluster
	pool  [][]byte
	dir   string
	shim  string
	base  time.Time
	stats soakStats
	gcPer []atomic.Int64 // GC runs finished, by replica

	mu      sync.Mutex
	backups []*soakBackup
	byDir   map[string]*soakBackup
	early   map[string]bool // pmx snapshots pruned before their acknowledgement was recorded
	orphans []int           // segments of the backups removed last
	locks   map[string]*sync.Mutex

	jmu     sync.Mutex
	journal []string

	clock, names atomic.Int64
	toGC         chan struct{} // an acknowledgement: wakes the contending GC
	toCheck      chan struct{} // an acknowledgement: wakes the checker
}

func runSoak(t *testing.T, c *soakCluster, pool [][]byte, d time.Duration) *soakStats {
	s := &soakRun{
		t: t, c: c, pool: pool, dir: t.TempDir(), base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		gcPer: make([]atomic.Int64, len(c.replicas)), byDir: map[string]*soakBackup{}, early: map[string]bool{},
		locks: map[string]*sync.Mutex{}, toGC: make(chan struct{}, 1), toCheck: make(chan struct{}, 1),
	}
	s.shim = filepath.Join(s.dir, "chunkbridge-casync-ssh")
	if err := os.Symlink(binary, s.shim); err != nil {
		t.Fatal(err)
	}
	n := len(c.replicas)
	// GC back to back on the replicas in turn, the last first (with three,
	// replica 3 serves no gateway: 3, 1, 2, 3, …); the contender, woken by
	// acknowledgements, one step ahead (1, 2, 3, 1, …).
	var order, contender []int
	for i := range n {
		order = append(order, (n-1+i)%n)
		contender = append(contender, i)
	}
	deadline := time.Now().Add(d)
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { s.gcLoop(stop, order, nil) })
	bg.Go(func() { s.gcLoop(stop, contender, s.toGC) })
	bg.Go(func() { s.checker(stop) })
	var clients sync.WaitGroup
	for w := range soakClients {
		clients.Go(func() { s.client(w, deadline) })
	}
	clients.Wait()
	close(stop)
	bg.Wait()

	// A last collection on each replica sweeps what the last removals
	// left; then every live backup must restore.
	for ri := range n {
		s.gc(ri)
	}
	s.checkAll()
	s.checkCatalog()
	s.verify()
	if s.stats.gcMissing.Load() > 0 {
		t.Errorf("GC found %d chunks referenced by published files missing from the store: an acknowledged backup lost data", s.stats.gcMissing.Load())
	}
	per := make([]string, n)
	for i := range per {
		per[i] = fmt.Sprintf("replica %d: %d", i+1, s.gcPer[i].Load())
	}
	t.Logf("soak with %d replicas, seed %d, %s: %s; GC runs by replica: %s", n, soakSeed, d, s.stats.String(), strings.Join(per, ", "))
	if t.Failed() {
		s.dumpJournal()
	}
	return &s.stats
}

// note adds a line to the journal, which is written out if the test fails.
func (s *soakRun) note(format string, args ...any) {
	line := time.Now().Format("15:04:05.000 ") + fmt.Sprintf(format, args...)
	s.jmu.Lock()
	s.journal = append(s.journal, line)
	s.jmu.Unlock()
}

func (s *soakRun) dumpJournal() {
	dir, err := os.MkdirTemp("", "chunkbridge-soak-")
	if err != nil {
		s.t.Log(err)
		return
	}
	s.jmu.Lock()
	os.WriteFile(filepath.Join(dir, "journal.log"), []byte(strings.Join(s.journal, "\n")+"\n"), 0o644)
	s.jmu.Unlock()
	for i, p := range s.c.replicas {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("replica-%d.log", i+1)), []byte(p.logs()), 0o644)
	}
	os.WriteFile(filepath.Join(dir, "casync-gateway.log"), []byte(s.c.casyncGW.logs()), 0o644)
	os.WriteFile(filepath.Join(dir, "pmx-gateway.log"), []byte(s.c.pmxGW.logs()), 0o644)
	s.t.Logf("the soak's journal and the replicas' logs are in %s", dir)
}

func (s *soakRun) lock(group string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[group]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[group] = l
	}
	return l
}

func (s *soakRun) live() []*soakBackup {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*soakBackup
	for _, b := range s.backups {
		if !b.gone {
			out = append(out, b)
		}
	}
	return out
}

// pick chooses a live backup at random and locks its group, so that it
// stays live until unlock; nil if there is none.
func (s *soakRun) pick(rng *rand.Rand) (*soakBackup, func()) {
	live := s.live()
	if len(live) == 0 {
		return nil, func() {}
	}
	b := live[rng.IntN(len(live))]
	l := s.lock(b.group)
	l.Lock()
	if s.isGone(b) {
		l.Unlock()
		return nil, func() {}
	}
	return b, l.Unlock
}

func (s *soakRun) isGone(b *soakBackup) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.gone
}

// removedLocked marks b removed on purpose and offers its segments for
// reuse: their chunks are now unreferenced (unless other backups hold
// them), the case where GC and a commit that reuses them race.
func (s *soakRun) removedLocked(b *soakBackup, how string) {
	b.gone = true
	s.orphans = append(s.orphans, b.recipe.segs...)
	if len(s.orphans) > 64 {
		s.orphans = s.orphans[len(s.orphans)-64:]
	}
	s.note("%s %s %s", how, b.proto, b.name)
}

func (s *soakRun) ack(b *soakBackup) {
	s.mu.Lock()
	s.backups = append(s.backups, b)
	if b.dir != "" {
		s.byDir[b.dir] = b
		if s.early[b.dir] {
			s.removedLocked(b, "pruned (before its acknowledgement was recorded)")
		}
	}
	s.mu.Unlock()
	if b.proto == "pmx" {
		s.stats.pmxAcked.Add(1)
	} else {
		s.stats.casyncAcked.Add(1)
	}
	s.stats.bytesAcked.Add(int64(b.size))
	if b.recipe.reuses {
		s.stats.reusing.Add(1)
	}
	s.note("acknowledged %s %s (%d bytes, sha256 %s, segments %v)", b.proto, b.name, b.size, b.digest[:16], b.recipe.segs)
	for _, ch := range []chan struct{}{s.toGC, s.toCheck} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// refused reports whether msg is a commit refused because chunks it
// references are gone (counting it), as opposed to a failure.
func (s *soakRun) refused(what, msg string) bool {
	switch {
	case strings.Contains(msg, "garbage collection deleted"):
		s.stats.refusedGC.Add(1)
	case strings.Contains(msg, "the store lacks"), strings.Contains(msg, "is not stored; upload it first"):
		s.stats.refusedMissing.Add(1)
	default:
		return false
	}
	s.note("refused %s: %s", what, firstLine(msg))
	return true
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "garbage collection deleted") || strings.Contains(l, "lacks") || strings.Contains(l, "not stored") {
			return strings.TrimSpace(l)
		}
	}
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Minute)
}

// client backs up, and deletes and prunes, until the deadline.
func (s *soakRun) client(w int, deadline time.Time) {
	rng := rand.New(rand.NewPCG(soakSeed, uint64(100+w)))
	dir := filepath.Join(s.dir, fmt.Sprintf("client-%d", w))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Error(err)
		return
	}
	for time.Now().Before(deadline) && !s.t.Failed() {
		r := s.recipe(rng)
		if rng.IntN(2) == 0 {
			s.backupPMX(w, rng, r)
		} else {
			s.backupCasync(w, rng, r, dir)
		}
		switch x := rng.IntN(10); {
		case x < 2:
			s.pruneOne(rng)
		case x < 5 || len(s.live()) > soakLive:
			s.deleteOne(rng)
		}
	}
}

// recipe picks 4 to 10 segments, two in five among those of recently
// removed backups.
func (s *soakRun) recipe(rng *rand.Rand) soakRecipe {
	s.mu.Lock()
	orphans := slices.Clone(s.orphans)
	s.mu.Unlock()
	r := soakRecipe{segs: make([]int, 4+rng.IntN(7)), tail: rng.Uint64(), tailLen: rng.IntN(48 << 10)}
	for i := range r.segs {
		if len(orphans) > 0 && rng.IntN(5) < 2 {
			r.segs[i] = orphans[rng.IntN(len(orphans))]
			r.reuses = true
		} else {
			r.segs[i] = rng.IntN(len(s.pool))
		}
	}
	return r
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// backupPMX backs up over PMXBCKUP into one of the client's two groups;
// one in five is a fixed (image) backup in 64 KiB blocks. A refused
// commit is tried again, as a real client would, up to three times.
func (s *soakRun) backupPMX(w int, rng *rand.Rand, r soakRecipe) {
	data := r.data(s.pool)
	id := fmt.Sprintf("c%d-%d", w, rng.IntN(2))
	fixed := rng.IntN(5) == 0
	name := "data"
	if fixed {
		name = "disk"
	}
	for range 3 {
		when := s.base.Add(time.Duration(s.clock.Add(1)) * time.Minute)
		p, err := func() (string, error) {
			ctx, cancel := opContext()
			defer cancel()
			c, err := pmxclient.Dial(ctx, s.c.pmxGW.pmx, nil)
			if err != nil {
				return "", err
			}
			defer c.Close()
			sum, err := pmxclient.Backup(ctx, c, pmxclient.BackupOptions{
				Type: pmxproto.BackupHost, ID: id, Name: name, Fixed: fixed, ChunkSize: 64 << 10,
				Input: bytes.NewReader(data), Size: int64(len(data)), Time: when,
			})
			if err != nil {
				return "", err
			}
			return sum.Path, nil
		}()
		if err == nil {
			dir := path.Dir(p)
			s.ack(&soakBackup{proto: "pmx", name: p, dir: dir, group: "pmx:" + path.Dir(dir), recipe: r, size: len(data), digest: digestOf(data)})
			return
		}
		if !s.refused("pmx backup host/"+id, err.Error()) {
			s.t.Errorf("pmx backup host/%s/%s: %v", id, when.Format(time.RFC3339), err)
			return
		}
	}
	s.stats.gaveUp.Add(1)
}

// backupCasync pushes with real casync through the casync gateway, with
// SHA-256 ids (the same chunks as PMXBCKUP's) three times in four and
// casync's default SHA-512/256 otherwise.
func (s *soakRun) backupCasync(w int, rng *rand.Rand, r soakRecipe, dir string) {
	data := r.data(s.pool)
	in := filepath.Join(dir, "in")
	if err := os.WriteFile(in, data, 0o644); err != nil {
		s.t.Error(err)
		return
	}
	name := fmt.Sprintf("soak/c%d/%05d.caibx", w, s.names.Add(1))
	args := []string{"make"}
	if rng.IntN(4) != 0 {
		args = append(args, "--digest=sha256")
	}
	args = append(args, "srv:/"+name, in)
	for range 3 {
		out, err := s.casync(dir, args...)
		if err == nil {
			s.ack(&soakBackup{proto: "casync", name: name, group: "casync:" + name, recipe: r, size: len(data), digest: digestOf(data)})
			return
		}
		if !s.refused("casync make "+name, out) {
			s.t.Errorf("casync %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
	}
	s.stats.gaveUp.Add(1)
}

func (s *soakRun) casync(dir string, args ...string) (string, error) {
	ctx, cancel := opContext()
	defer cancel()
	cmd := exec.CommandContext(ctx, "casync", args...)
	cmd.Env = append(os.Environ(), "CASYNC_SSH_PATH="+s.shim, "CHUNKBRIDGE_CASYNC_ADDR="+s.c.casyncGW.casync)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cli runs the chunkbridge binary and returns its stdout, stderr and exit
// code.
func (s *soakRun) cli(args ...string) (string, string, int) {
	ctx, cancel := opContext()
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
		if code <= 0 {
			errb.WriteString(err.Error())
		}
	}
	return out.String(), errb.String(), code
}

// adminJSON runs an admin command with --json and reads what it prints
// into m. It returns the exit code (-1 if the output is no m) and the
// output, for messages.
func (s *soakRun) adminJSON(m proto.Message, args ...string) (int, string) {
	out, errOut, code := s.cli(append(args, "--json")...)
	if code == 0 {
		if err := protojson.Unmarshal([]byte(out), m); err != nil {
			return -1, fmt.Sprintf("%v\n%s%s", err, out, errOut)
		}
	}
	return code, out + errOut
}

// deleteOne deletes a live backup, any client's, through a replica chosen
// at random.
func (s *soakRun) deleteOne(rng *rand.Rand) {
	b, unlock := s.pick(rng)
	defer unlock()
	if b == nil {
		return
	}
	ri := rng.IntN(len(s.c.replicas))
	ctx, cancel := opContext()
	defer cancel()
	var err error
	if b.proto == "pmx" {
		typ, rest, _ := strings.Cut(b.dir, "/")
		id, at, _ := strings.Cut(rest, "/")
		_, err = s.c.catalogs[ri].DeleteSnapshot(ctx, &chunkbridgev1.DeleteSnapshotRequest{Type: typ, BackupId: id, Time: at})
	} else {
		_, err = s.c.catalogs[ri].DeleteIndex(ctx, &chunkbridgev1.DeleteIndexRequest{Name: b.name})
	}
	if err != nil {
		s.t.Errorf("delete %s through replica %d: %v", b.name, ri+1, err)
		return
	}
	s.stats.deleted.Add(1)
	s.mu.Lock()
	s.removedLocked(b, fmt.Sprintf("deleted through replica %d:", ri+1))
	s.mu.Unlock()
}

// pruneOne prunes a PMXBCKUP group, any client's, keeping its last 1 or 2
// snapshots, with `chunkbridge prune` through a replica chosen at random.
func (s *soakRun) pruneOne(rng *rand.Rand) {
	id := fmt.Sprintf("c%d-%d", rng.IntN(soakClients), rng.IntN(2))
	l := s.lock("pmx:host/" + id)
	l.Lock()
	defer l.Unlock()
	ri := rng.IntN(len(s.c.replicas))
	var resp chunkbridgev1.PruneResponse
	if code, msg := s.adminJSON(&resp, "prune", "--keep-last", fmt.Sprint(1+rng.IntN(2)), "--type", "host", "--id", id, "--chunk-service", s.c.replicas[ri].grpc); code != 0 {
		s.t.Errorf("prune host/%s through replica %d: exit %d\n%s", id, ri+1, code, msg)
		return
	}
	s.stats.pruneRuns.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range resp.Decisions {
		if !d.Removed {
			continue
		}
		s.stats.pruned.Add(1)
		dir := d.Type + "/" + d.BackupId + "/" + d.Time.AsTime().UTC().Format(time.RFC3339)
		if b := s.byDir[dir]; b != nil {
			s.removedLocked(b, fmt.Sprintf("pruned through replica %d:", ri+1))
		} else {
			s.early[dir] = true
		}
	}
}

// gcLoop collects garbage with grace 0 on the replicas of order in turn:
// back to back, or once per wake-up when wake is set.
func (s *soakRun) gcLoop(stop <-chan struct{}, order []int, wake <-chan struct{}) {
	for i := 0; ; i++ {
		if wake != nil {
			select {
			case <-stop:
				return
			case <-wake:
			}
		} else {
			select {
			case <-stop:
				return
			default:
			}
		}
		s.gc(order[i%len(order)])
	}
}

// gc runs `chunkbridge gc --grace 0` on replica ri. A run refused because
// another holds the lock is counted.
func (s *soakRun) gc(ri int) {
	var r chunkbridgev1.GCReport
	if code, msg := s.adminJSON(&r, "gc", "--grace", "0", "--chunk-service", s.c.replicas[ri].grpc); code != 0 {
		if code == exitFailed && strings.Contains(msg, "already running") {
			s.stats.gcBusy.Add(1)
			return
		}
		s.t.Errorf("gc on replica %d: exit %d\n%s", ri+1, code, msg)
		return
	}
	s.stats.gcRuns.Add(1)
	s.gcPer[ri].Add(1)
	s.stats.chunksDeleted.Add(r.ChunksDeleted)
	s.stats.gcBytes.Add(r.BytesDeleted)
	s.stats.gcProtected.Add(r.ChunksProtected)
	s.stats.gcMissing.Add(r.ReferencedMissing)
	s.stats.gcNanos.Add(int64(r.Duration.AsDuration()))
	s.note("gc on replica %d in %s: %d files marked, %d chunks scanned, %d deleted, %d protected, %d referenced missing",
		ri+1, r.Duration.AsDuration().Round(time.Millisecond), r.IndexFiles, r.ChunksScanned, r.ChunksDeleted, r.ChunksProtected, r.ReferencedMissing)
	if r.ReferencedMissing > 0 {
		s.t.Errorf("gc on replica %d: %d chunks referenced by published files are missing", ri+1, r.ReferencedMissing)
	}
}

// checker restores a live backup, chosen at random, after each
// acknowledgement (coalesced), while the soak runs.
func (s *soakRun) checker(stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(soakSeed, 99))
	dir := filepath.Join(s.dir, "checker")
	os.MkdirAll(dir, 0o755)
	for {
		select {
		case <-stop:
			return
		case <-s.toCheck:
		}
		if b, unlock := s.pick(rng); b != nil {
			s.check(b, dir)
			s.stats.checkedDuring.Add(1)
			unlock()
		}
	}
}

// checkAll restores every live backup, two at a time.
func (s *soakRun) checkAll() {
	live := s.live()
	work := make(chan *soakBackup)
	var wg sync.WaitGroup
	for i := range 2 {
		dir := filepath.Join(s.dir, fmt.Sprintf("final-%d", i))
		os.MkdirAll(dir, 0o755)
		wg.Go(func() {
			for b := range work {
				s.check(b, dir)
				s.stats.checkedEnd.Add(1)
			}
		})
	}
	for _, b := range live {
		work <- b
	}
	close(work)
	wg.Wait()
}

// check restores b and compares it byte for byte with what was backed up.
// Any difference or failure is a lost acknowledged backup.
func (s *soakRun) check(b *soakBackup, dir string) {
	want := b.recipe.data(s.pool)
	var got []byte
	var err error
	if b.proto == "pmx" {
		ctx, cancel := opContext()
		defer cancel()
		var c *pmxclient.Client
		if c, err = pmxclient.Dial(ctx, s.c.pmxGW.pmx, nil); err == nil {
			var buf bytes.Buffer
			_, err = pmxclient.Restore(ctx, c, b.name, &buf, nil)
			c.Close()
			got = buf.Bytes()
		}
	} else {
		out := filepath.Join(dir, "out")
		os.Remove(out)
		var msg string
		if msg, err = s.casync(dir, "extract", "srv:/"+b.name, out); err == nil {
			got, err = os.ReadFile(out)
		} else {
			err = fmt.Errorf("%v\n%s", err, msg)
		}
	}
	if err == nil && !bytes.Equal(got, want) {
		err = fmt.Errorf("restored %d bytes (sha256 %s), backed up %d (sha256 %s)", len(got), digestOf(got), len(want), b.digest)
	}
	if err != nil {
		s.stats.lost.Add(1)
		s.note("LOST %s %s: %v", b.proto, b.name, err)
		s.t.Errorf("acknowledged %s backup %s does not restore: %v", b.proto, b.name, err)
	}
}

// checkCatalog wants the catalog to list exactly the live backups: refused
// commits published nothing, removals removed.
func (s *soakRun) checkCatalog() {
	ctx, cancel := opContext()
	defer cancel()
	want := map[string]bool{}
	for _, b := range s.live() {
		want[b.name] = true
	}
	got := map[string]bool{}
	cat := s.c.catalogs[len(s.c.catalogs)-1]
	snaps, err := cat.ListSnapshots(ctx, &chunkbridgev1.ListSnapshotsRequest{})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, sn := range snaps.Snapshots {
		for _, f := range sn.Files {
			got[f.Path] = true
		}
	}
	for token := ""; ; {
		resp, err := cat.ListIndexes(ctx, &chunkbridgev1.ListIndexesRequest{Prefix: "soak/", PageToken: token})
		if err != nil {
			s.t.Fatal(err)
		}
		for _, ix := range resp.Indexes {
			got[ix.Name] = true
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	var extra, missing []string
	for n := range got {
		if !want[n] {
			extra = append(extra, n)
		}
	}
	for n := range want {
		if !got[n] {
			missing = append(missing, n)
		}
	}
	sort.Strings(extra)
	sort.Strings(missing)
	if len(extra) > 0 || len(missing) > 0 {
		s.t.Errorf("the catalog lists %d files that are no live acknowledged backup %v, and lacks %d live ones %v", len(extra), extra, len(missing), missing)
	}
}

// verify runs `chunkbridge verify` and wants it clean.
func (s *soakRun) verify() {
	ri := len(s.c.replicas) - 1
	var r chunkbridgev1.VerifyReport
	code, msg := s.adminJSON(&r, "verify", "--chunk-service", s.c.replicas[ri].grpc)
	if code != 0 || r.Missing != 0 || r.Corrupt != 0 || r.IndexesCorrupt != 0 || !r.Complete {
		s.t.Errorf("verify: exit %d\n%s", code, msg)
		return
	}
	s.t.Logf("verify through replica %d: %d files, %d referenced chunks, %d chunks read back; missing 0, corrupt 0", ri+1, r.IndexFiles, r.ReferencedChunks, r.ChunksVerified)
}
