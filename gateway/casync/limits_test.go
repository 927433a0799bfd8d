package casync_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	cbclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// storeBigChunks uploads n chunks of size random (incompressible) bytes
// through chunks and returns their ids and stored bytes.
func storeBigChunks(t *testing.T, chunks *cbclient.Chunks, n, size int) ([][32]byte, map[[32]byte][]byte) {
	t.Helper()
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	up, err := chunks.NewUploader(t.Context(), cbclient.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	ids := make([][32]byte, n)
	stored := map[[32]byte][]byte{}
	for i := range ids {
		raw := make([]byte, size)
		rng.Read(raw)
		ids[i] = sha256.Sum256(raw)
		stored[ids[i]] = enc.EncodeAll(raw, nil)
		err := up.Put(t.Context(), cbclient.Upload{ID: ids[i], Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256,
			Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD, Data: stored[ids[i]]}, func(r cbclient.Result) {
			if r.Err != nil {
				t.Errorf("storing a test chunk: %v", r.Err)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := up.Close(); err != nil || t.Failed() {
		t.Fatalf("storing the test chunks: %v", err)
	}
	return ids, stored
}

// heap is the live heap after two collections: buffers in a sync.Pool
// (gRPC's, holding transient copies of chunks just sent and received;
// bufio's; the session writer's) survive the first in the pool's victim
// cache, a process-wide cache that is no session's memory.
func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// wait receives n values from ch, failing (not hanging) if they do not
// come.
func wait[T any](t *testing.T, ch <-chan T, n int, what string) []T {
	t.Helper()
	var got []T
	fail := time.After(2 * time.Minute)
	for len(got) < n {
		select {
		case v := <-ch:
			got = append(got, v)
		case <-fail:
			t.Fatalf("%s: %d of %d after 2 minutes", what, len(got), n)
		}
	}
	return got
}

// waitUpTo receives at most n values from ch, for at most d.
func waitUpTo[T any](ch <-chan T, n int, d time.Duration) []T {
	var got []T
	timeout := time.After(d)
	for len(got) < n {
		select {
		case v := <-ch:
			got = append(got, v)
		case <-timeout:
			return got
		}
	}
	return got
}

type ended struct {
	verb string
	err  error
}

func hooks(t *testing.T) (served chan ended, stalled chan struct{}, handled chan caproto.Type) {
	served, stalled, handled = make(chan ended, 100), make(chan struct{}, 100), make(chan caproto.Type, 10000)
	casync.SetTestHooks(t,
		func(verb string, err error) { served <- ended{verb, err} },
		func() { stalled <- struct{}{} },
		func(ty caproto.Type) { handled <- ty })
	return served, stalled, handled
}

const (
	stalledClients = 20
	bigChunk       = 1 << 20
	queueBytes     = 1 << 20
	readAhead      = 2 << 20
)

// Twenty clients that REQUEST many big chunks and never read are cut off
// at the write deadline. While they stall, each holds a bounded number of
// bytes and goroutines, and another client is served in full.
func TestStalledPullsEndAtWriteDeadline(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		served, stalled, _ := hooks(t)
		h := newHarnessOn(t, tr, func(srv *casync.Server) {
			srv.Handler.WriteTimeout = 10 * time.Second // room for the measurements and the reading client
			srv.Handler.IdleTimeout = 10 * time.Minute  // not what ends them
			srv.Handler.QueueBytes = queueBytes
			srv.Handler.ReadAheadBytes = readAhead
		})
		ids, stored := storeBigChunks(t, h.chunks, 24, bigChunk)
		baseHeap, baseG := heap(), runtime.NumGoroutine()

		for range stalledClients {
			c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
			c.conn.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
			c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: ids})
			// and never reads
		}
		wait(t, stalled, stalledClients, "pull sessions with all fetchers waiting")
		heapStalled, gStalled := heap(), runtime.NumGoroutine()
		perSession := (int64(heapStalled) - int64(baseHeap)) / stalledClients
		gPerSession := (gStalled - baseG) / stalledClients
		t.Logf("while %d pulls stall: heap +%.1f MiB (%.2f MiB per session), goroutines +%d (%d per session)",
			stalledClients, float64(int64(heapStalled)-int64(baseHeap))/(1<<20), float64(perSession)/(1<<20), gStalled-baseG, gPerSession)
		// What a session may hold: its queue, its read-ahead, a chunk per
		// fetcher over it, the write buffer; and, on the chunk service, the
		// chunks of the batches it asked for (at most its read-ahead).
		bound := int64(queueBytes + 2*readAhead + 2*bigChunk + 1<<20)
		if perSession > bound {
			t.Errorf("a stalled pull holds %d bytes of heap, bound %d", perSession, bound)
		}
		if gPerSession > 25 {
			t.Errorf("a stalled pull holds %d goroutines", gPerSession)
		}

		// Meanwhile another client is served every chunk.
		c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
		c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: ids})
		if _, ok := c.next().(*caproto.Hello); !ok {
			t.Fatal("no HELLO first")
		}
		for got := 0; got < len(ids); got++ {
			m, ok := c.next().(*caproto.Chunk)
			if !ok || !bytes.Equal(m.Data, stored[m.ID]) {
				t.Fatalf("reading pull: got %v, want the stored CHUNK", m)
			}
		}
		select {
		case e := <-served:
			t.Fatalf("a stalled %s ended (%v) before the reading client was served", e.verb, e.err)
		default:
		}
		c.conn.Close()

		for _, e := range wait(t, served, stalledClients+1, "sessions ended") {
			if e.err == nil && e.verb == "pull" {
				continue // the reading client
			}
			if e.err == nil || !strings.Contains(e.err.Error(), "read nothing") {
				t.Errorf("a stalled pull ended with %v, want the write deadline", e.err)
			}
		}
	})
}

// Twenty pushes that stop sending, half in the middle of the index and
// half in the middle of the chunks, end at the idle timeout with an
// ABORT, and publish nothing; another push meanwhile publishes.
func TestStalledPushesEndAtIdleTimeout(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		served, _, handled := hooks(t)
		h := newHarnessOn(t, tr, func(srv *casync.Server) {
			srv.Handler.IdleTimeout = 5 * time.Second
		})
		// Warmed up (connections, buffers), so that the baseline holds what
		// any push leaves.
		h.push(t, "/warmup.caibx", makeChunks(5))
		baseHeap, baseG := heap(), runtime.NumGoroutine()
		const n = 12 // chunks per push
		var clients []*client
		events := 0
		for i := range stalledClients {
			chunks := makeChunks(n)
			for j := range chunks { // chunks of their own: every push requests all of them
				chunks[j].data = append([]byte(fmt.Sprintf("push %d ", i)), chunks[j].data...)
				chunks[j].id = sha256.Sum256(chunks[j].data)
			}
			idx := indexBytes(t, chunks)
			c := h.dial(t, "push", "-", "-", fmt.Sprintf("/stalled/%d.caibx", i), "/default.castr")
			clients = append(clients, c)
			if i%2 == 0 {
				c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: idx[:len(idx)/2]})
				events++
				continue
			}
			c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: idx}, &caproto.IndexEOF{})
			c.next() // HELLO
			req, ok := c.next().(*caproto.Request)
			if !ok || len(req.IDs) != n {
				t.Fatalf("push %d: want a REQUEST for all %d chunks", i, n)
			}
			enc, _ := zstd.NewWriter(nil)
			for _, ch := range chunks[:n/2] {
				c.send(&caproto.Chunk{Flags: caproto.ChunkCompressed, ID: ch.id, Data: enc.EncodeAll(ch.data, nil)})
			}
			events += 2 + n/2
		}
		wait(t, handled, events, "frames handled by the stalled pushes")
		heapStalled, gStalled := heap(), runtime.NumGoroutine()

		// Meanwhile another push completes.
		h.push(t, "/meanwhile.caibx", makeChunks(5))
		if !h.indexExists(t, "meanwhile.caibx") {
			t.Fatal("a push beside the stalled ones published nothing")
		}
		select {
		case e := <-served:
			if e.err != nil {
				t.Fatalf("a stalled %s ended (%v) before the other push was served", e.verb, e.err)
			}
		default:
		}

		for _, c := range clients {
			c.expectAbort(syscall.ETIMEDOUT, "no traffic")
		}
		for _, e := range wait(t, served, stalledClients, "stalled pushes ended") {
			var idle *session.IdleError
			if !errors.As(e.err, &idle) {
				t.Errorf("a stalled push ended with %v, want the idle timeout", e.err)
			}
		}
		for i := range stalledClients {
			if h.indexExists(t, fmt.Sprintf("stalled/%d.caibx", i)) {
				t.Errorf("stalled push %d published its index", i)
			}
		}
		// Measured against the lower of the heap before and after: garbage of
		// an earlier test may be freed in between.
		held := (int64(heapStalled) - int64(min(baseHeap, heap()))) / stalledClients
		t.Logf("while %d pushes stall: heap %.2f MiB per session, goroutines +%d (%d per session)",
			stalledClients, float64(held)/(1<<20), gStalled-baseG, (gStalled-baseG)/stalledClients)
		if held > 2<<20 {
			t.Errorf("a stalled push holds %d bytes of heap", held)
		}
		if per := (gStalled - baseG) / stalledClients; per > 25 {
			t.Errorf("a stalled push holds %d goroutines", per)
		}
	})
}

// Over ssh the session is stdin and stdout: a client that stops reading
// is cut off at the write deadline there too.
func TestStalledPullOverPipesEndsAtWriteDeadline(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		svcs := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
		chunks := tr.open(svcs)
		ids, _ := storeBigChunks(t, chunks, 4, bigChunk)
		inR, inW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer inW.Close()
		defer outR.Close()
		h := &casync.Handler{Chunks: chunks, Catalog: cbclient.NewCatalogGRPC(svcs.Conn), WriteTimeout: time.Second, DrainTimeout: time.Second}
		var b []byte
		b = (&caproto.Hello{Features: caproto.PullChunks}).Encode(b)
		b = (&caproto.Request{IDs: ids}).Encode(b)
		if _, err := inW.Write(b); err != nil {
			t.Fatal(err)
		}
		err = h.Serve(t.Context(), casync.StdioConn{In: inR, Out: outW}, casync.Args{Store: "/default.castr"})
		if err == nil || !strings.Contains(err.Error(), "read nothing") {
			t.Fatalf("Serve = %v, want the write deadline", err)
		}
	})
}

// Beyond MaxConns a connection is told why in an ABORT, and the session
// being served goes on.
func TestMaxConnsRefusalAborts(t *testing.T) {
	h := newHarnessWith(t, func(srv *casync.Server) { srv.MaxConns = 1 })
	first := h.dial(t, "pull", "-", "-", "-", "/default.castr")
	first.send(&caproto.Hello{Features: caproto.PullChunks})
	if _, ok := first.next().(*caproto.Hello); !ok {
		t.Fatal("no HELLO first")
	}
	second := h.dial(t, "pull", "-", "-", "-", "/default.castr")
	second.expectAbort(syscall.EBUSY, "too many connections")
	if _, err := second.r.ReadMessage(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the refusal: %v, want end of stream", err)
	}
	missing := sha256.Sum256([]byte("none"))
	first.send(&caproto.Request{IDs: [][32]byte{missing}})
	if m, ok := first.next().(*caproto.Missing); !ok || m.ID != missing {
		t.Fatal("the first session stopped being served")
	}
}

// A pull may not make the gateway remember chunk ids without bound.
func TestTooManyRequestedAborts(t *testing.T) {
	h := newHarnessWith(t, func(srv *casync.Server) { srv.Handler.MaxRequested = 100 })
	c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
	ids := make([][32]byte, 60)
	for i := range ids {
		ids[i] = sha256.Sum256([]byte{byte(i)})
	}
	// Re-requests of known ids do not count; new ones do.
	c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: ids}, &caproto.Request{Flags: caproto.RequestHighPriority, IDs: ids})
	if _, ok := c.next().(*caproto.Hello); !ok {
		t.Fatal("no HELLO first")
	}
	for range ids {
		if m, ok := c.next().(*caproto.Missing); !ok {
			t.Fatalf("got %v, want MISSING for each of the first 60 ids", m)
		}
	}
	for i := range ids {
		ids[i] = sha256.Sum256([]byte{byte(i), 1})
	}
	c.send(&caproto.Request{IDs: ids})
	c.expectAbort(syscall.ENOBUFS, "more than 100 chunks")
}

// A push may not make the gateway remember chunk ids without bound: an
// index with more distinct ids than MaxPushIDs is refused with ENOBUFS and
// leaves no index; repeated ids do not count.
func TestTooManyPushIDsAborts(t *testing.T) {
	h := newHarnessWith(t, func(srv *casync.Server) { srv.Handler.MaxPushIDs = 100 })
	chunks := makeChunks(150)
	// 100 distinct ids, each twice: within the bound.
	within := append(append([]testChunk(nil), chunks[:100]...), chunks[:100]...)
	h.push(t, "/within.caibx", within)
	if !h.indexExists(t, "within.caibx") {
		t.Fatal("a push of 100 distinct chunks published nothing")
	}
	c := h.dial(t, "push", "-", "-", "/over.caibx", "/default.castr")
	c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: indexBytes(t, chunks)}, &caproto.IndexEOF{})
	c.expectAbort(syscall.ENOBUFS, "more than 100 distinct chunks")
	if h.indexExists(t, "over.caibx") {
		t.Fatal("a refused push left its index visible")
	}
}

// More stalled pulls than the process's shared budget has room for: the
// heap they hold together stays within that budget (not their number times
// their per-session share), the stalled ones are cut once others wait for
// the budget, and another client is served in full.
func TestStalledPullsShareOneBudget(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		const sharedBytes = 8 << 20
		shared := session.NewBudget(sharedBytes)
		served, _, _ := hooks(t)
		h := newHarnessOn(t, tr, func(srv *casync.Server) {
			srv.Handler.WriteTimeout = 10 * time.Minute // not what ends them: the stall timeout under pressure does
			srv.Handler.QueueBytes = queueBytes
			srv.Handler.ReadAheadBytes = readAhead
			srv.Handler.Shared = shared
			// What ends them under pressure; shorter than the default 5s
			// so that the rounds a waiter sits through are short.
			srv.Handler.StallTimeout = time.Second
		})
		ids, stored := storeBigChunks(t, h.chunks, 24, bigChunk)
		baseHeap := heap()
		var stalledConns []*client
		for range stalledClients {
			c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
			c.conn.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
			c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: ids})
			stalledConns = append(stalledConns, c)
		}
		for deadline := time.Now().Add(30 * time.Second); shared.InUse() < sharedBytes-readAhead; {
			if time.Now().After(deadline) {
				t.Fatalf("the stalled pulls hold %d bytes of the shared budget", shared.InUse())
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // let them take what they can
		grown := int64(heap()) - int64(baseHeap)
		t.Logf("%d stalled pulls: heap +%.1f MiB, shared budget %d MiB in use", stalledClients, float64(grown)/(1<<20), shared.InUse()>>20)
		// Without the shared budget each would hold queue + read-ahead +
		// a chunk per fetcher (~8 MiB here, 160 MiB in all). What is not
		// chunk data stays per session: its write buffer (256 KiB), the
		// transport's stream buffers.
		if bound := int64(sharedBytes + 2*bigChunk + stalledClients*(1<<20)); grown > bound {
			t.Errorf("%d stalled pulls hold %d bytes of heap, bound %d", stalledClients, grown, bound)
		}
		if got := shared.InUse(); got > sharedBytes+fetchersOverdraw(stalledClients) {
			t.Errorf("shared budget %d in use, size %d", got, sharedBytes)
		}

		// Another client is served every chunk once the stalled ones are
		// cut (after the stall timeout, not the write timeout).
		readAll := func() {
			start := time.Now()
			c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
			c.conn.SetDeadline(time.Now().Add(60 * time.Second))
			c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: ids})
			if _, ok := c.next().(*caproto.Hello); !ok {
				t.Fatal("no HELLO first")
			}
			for got := 0; got < len(ids); got++ {
				m, ok := c.next().(*caproto.Chunk)
				if !ok || !bytes.Equal(m.Data, stored[m.ID]) {
					t.Fatalf("reading pull: got %v, want the stored CHUNK", m)
				}
			}
			t.Logf("the reading client was served in %v", time.Since(start))
			c.conn.Close()
		}
		readAll()
		// A stalled session is cut while a request waits for the budget and
		// its write is in progress. One that had not reached its write
		// when the reader waited (a loaded machine) keeps its bytes until
		// the next waiter: another reader applies the pressure again. A
		// reader that no longer has to wait (the survivors leave it room)
		// cuts nobody, by design: what they hold stands in no one's way,
		// and their write timeout ends them.
		var events []ended
		readers := 1
		for round := 0; len(events) < stalledClients+readers && round < 4; round++ {
			wait := 15 * time.Second // the first cuts, on a loaded machine
			if round > 0 {
				wait = 5 * time.Second // a stall timeout is 1 s
			}
			events = append(events, waitUpTo(served, stalledClients+readers-len(events), wait)...)
			if len(events) < stalledClients+readers {
				readAll()
				readers++
			}
		}
		cut := 0
		for _, e := range events {
			if e.err == nil {
				continue // a reading client
			}
			cut++
			if !strings.Contains(e.err.Error(), "read nothing") {
				t.Errorf("a stalled pull ended with %v, want the stall timeout", e.err)
			}
		}
		survivors := stalledClients - cut
		t.Logf("%d readers cut %d of %d stalled pulls; %d survivors hold %d of %d bytes", readers, cut, stalledClients, survivors, shared.InUse(), sharedBytes)
		if cut < stalledClients/2 {
			t.Fatalf("only %d of %d stalled pulls were cut while %d readers waited for the budget", cut, stalledClients, readers)
		}
		// The survivors end when their peers go.
		for _, c := range stalledConns {
			c.conn.Close()
		}
		if got := waitUpTo(served, survivors, 30*time.Second); len(got) != survivors {
			t.Fatalf("%d of %d surviving stalled pulls ended after their peers closed", len(got), survivors)
		}
		for deadline := time.Now().Add(10 * time.Second); shared.InUse() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%d bytes of the shared budget still held after every session ended", shared.InUse())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// fetchersOverdraw is what n sessions may overdraw the shared budget by:
// a chunk per fetcher larger than its estimate (none here: every chunk is
// the same size).
func fetchersOverdraw(n int) int64 { return 0 }

// Pulls that REQUEST a 1-byte chunk, then many big ones, and never read:
// the estimate per chunk is the largest seen, not the average (which made
// each session hold its read-ahead and queue of chunks at a byte each, far
// beyond the shared budget), and a chunk above its estimate ends its
// batch, so a session overdraws the shared budget by at most one chunk
// per fetcher.
func TestTinyThenHugeChunksOverdrawOnce(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		const sharedBytes, chunkBytes, fetchers, sessions = 4 << 20, 1 << 20, 2, 8
		shared := session.NewBudget(sharedBytes)
		h := newHarnessOn(t, tr, func(srv *casync.Server) {
			srv.Handler.WriteTimeout = 10 * time.Minute
			srv.Handler.QueueBytes = 4 << 20
			srv.Handler.ReadAheadBytes = readAhead
			srv.Handler.Shared = shared
		})
		tiny, _ := storeBigChunks(t, h.chunks, 1, 1)
		ids, _ := storeBigChunks(t, h.chunks, 96, chunkBytes)
		baseHeap := heap()
		var pulls []*client
		for range sessions {
			c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
			c.conn.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
			c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: tiny})
			pulls = append(pulls, c)
		}
		for _, c := range pulls { // the tiny chunks arrive first
			c.conn.SetReadDeadline(time.Now().Add(time.Minute))
			if _, ok := c.next().(*caproto.Hello); !ok {
				t.Fatal("no HELLO first")
			}
			if m, ok := c.next().(*caproto.Chunk); !ok || m.ID != tiny[0] {
				t.Fatalf("the tiny chunk: got %v", m)
			}
		}
		for _, c := range pulls {
			c.send(&caproto.Request{IDs: ids}) // and never read
		}
		time.Sleep(2 * time.Second)
		grown := int64(heap()) - int64(baseHeap)
		peak := shared.Peak() // the budget keeps its own high-water mark: no sample misses it
		t.Logf("%d pulls of a 1-byte chunk then %d of %d MiB, never read: shared budget peak %.1f MiB of %d, heap +%.1f MiB",
			sessions, len(ids), chunkBytes>>20, float64(peak)/(1<<20), sharedBytes>>20, float64(grown)/(1<<20))
		if bound := int64(sharedBytes + sessions*fetchers*chunkBytes); peak > bound {
			t.Errorf("shared budget in use peaked at %d bytes, want at most %d (budget and one chunk per fetcher)", peak, bound)
		}
		// Chunk data within the shared budget, one chunk per fetcher read
		// ahead by the chunk service, 1 MiB of buffers per session.
		if bound := int64(sharedBytes + sessions*(fetchers*chunkBytes+1<<20)); grown > bound {
			t.Errorf("heap grew by %.1f MiB, want at most %.1f MiB", float64(grown)/(1<<20), float64(bound)/(1<<20))
		}
	})
}
