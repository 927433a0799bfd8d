package pmx_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// heap reads the process's heap in use and goroutines after two
// collections. Buffers in a sync.Pool survive one collection (the pool's
// victim cache) and go at the second: gRPC's buffer pools hold transient
// copies of the chunks just sent and received (the chunk service's
// encoding, the gateway's frames and decoding: several per chunk in
// flight), bufio and the session's writer pool theirs. One collection
// counted those, a process-wide cache freed on demand, as if the
// connections held them (TestManyPipelinedDownloadsShareOneBudget/grpc saw
// +33..37 MiB after one collection, +5..9 MiB after two, with the shared
// budget at exactly its 16 MiB: no overdraw).
func heap() (inuse uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse, runtime.NumGoroutine()
}

// 200 pipelined DownloadChunks that are never read hold the connection's
// reply queue, not the 6 GiB asked for; another client is still served.
func TestPipelinedDownloadsNeverReadStayBounded(t *testing.T) {
	onBothTransports(t, testPipelinedDownloadsNeverReadStayBounded)
}

func testPipelinedDownloadsNeverReadStayBounded(t *testing.T, tr transport) {
	const queue = 16 << 20
	h := newHarnessOn(t, tr, func(s *pmx.Server) { s.QueueBytes = queue })
	c := h.dial(t)
	var digests []pmxproto.Digest
	for i := range 4 {
		digests = append(digests, c.upload(1, bytes.Repeat([]byte{byte(i)}, 4<<20)))
	}
	want := append(append([]pmxproto.Digest{}, digests...), digests...) // 32 MiB a request
	// Read once, so the chunk service's cache is warm before measuring.
	c.send(&pmxproto.DownloadChunks{ID: 2, Digests: digests})
	for range digests {
		if _, ok := c.next().(*pmxproto.Chunk); !ok {
			t.Fatal("warming download: want Chunk")
		}
	}
	heapBefore, goBefore := heap()

	full := make(chan struct{}, 1)
	pmx.SetDownloadsFullHook(func() {
		select {
		case full <- struct{}{}:
		default:
		}
	})
	defer pmx.SetDownloadsFullHook(nil)
	hostile := h.dial(t)
	var reqs []pmxproto.Packet
	for i := range 200 {
		reqs = append(reqs, &pmxproto.DownloadChunks{ID: uint8(i), Digests: want})
	}
	hostile.send(reqs...) // and never read
	<-full                // the server stopped reading its requests

	// Another client is served meanwhile, by the same process.
	other := h.dial(t)
	d := other.upload(1, []byte("still served"))
	other.send(&pmxproto.DownloadChunks{ID: 2, Digests: []pmxproto.Digest{d}})
	if ch, ok := other.next().(*pmxproto.Chunk); !ok || string(ch.Data) != "still served" {
		t.Fatalf("second client: %+v", ch)
	}

	heapAfter, goAfter := heap()
	grown := int64(heapAfter) - int64(heapBefore)
	t.Logf("200 pipelined DownloadChunks of 32 MiB, never read: heap +%d MiB, goroutines %d -> %d", grown>>20, goBefore, goAfter)
	// The reply queue, a chunk in hand and its encoding, the chunk
	// service's read-ahead: tens of MiB, never the 6.4 GiB requested.
	if grown > queue+96<<20 {
		t.Fatalf("heap grew by %d MiB with a reply queue of %d MiB", grown>>20, queue>>20)
	}
	// Two connections: the lanes of the queued downloads (at most 16 wait),
	// the worker, the session's goroutines, gRPC streams.
	if goAfter-goBefore > 60 {
		t.Fatalf("goroutines %d -> %d", goBefore, goAfter)
	}
}

// CreateBackups announcing 16 Mi slots allocate nothing for them, and a
// connection opens at most 16 files.
func TestHugeFixedCreatesStayBounded(t *testing.T) {
	h := newHarness(t)
	heapBefore, _ := heap()
	const conns, files = 3, 20
	for n := range conns {
		c := h.dial(t)
		var reqs []pmxproto.Packet
		for i := range files {
			reqs = append(reqs, &pmxproto.CreateBackup{ID: uint8(i + 1), BackupType: pmxproto.BackupVM, Timestamp: ts, ChunkSize: 1, FileSize: 16 << 20, BackupID: "big", Name: fmt.Sprintf("c%d-f%d", n, i)})
		}
		c.send(reqs...)
		created, refused := 0, 0
		for range files {
			switch p := c.next().(type) {
			case *pmxproto.BackupCreated:
				created++
			case *pmxproto.Error:
				if !strings.Contains(p.Reason, "too many open backup files") {
					t.Fatalf("Error %q", p.Reason)
				}
				refused++
			}
		}
		if created != 16 || refused != files-16 {
			t.Fatalf("connection %d: %d created, %d refused; want 16 and %d", n, created, refused, files-16)
		}
	}
	heapAfter, _ := heap()
	grown := int64(heapAfter) - int64(heapBefore)
	t.Logf("%d open files of 16 Mi slots: heap +%d MiB", conns*16, grown>>20)
	if grown > 64<<20 {
		t.Fatalf("%d open 16 Mi-slot files grew the heap by %d MiB", conns*16, grown>>20)
	}
}

// 2000 idle connections cost a few goroutines each; one more is refused
// with a reason.
func TestIdleConnectionsAndMaxConns(t *testing.T) {
	const n = 2000
	h := newHarness(t, func(s *pmx.Server) { s.MaxConns = n })
	heapBefore, goBefore := heap()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if p, err := pmxproto.NewReader(c).ReadPacket(); err != nil || p.PacketType() != pmxproto.TypeHello {
			t.Fatalf("connection %d: %v %v, want Hello", len(conns), p, err)
		}
	}
	heapAfter, goAfter := heap()
	perConn, heapPerConn := (goAfter-goBefore)/n, (int64(heapAfter)-int64(heapBefore))/n
	t.Logf("%d idle connections: %d goroutines each, heap +%d KiB each (server and client sides)", n, perConn, heapPerConn>>10)
	if perConn > 3 || h.srv.Active() != n {
		t.Fatalf("%d goroutines per idle connection, %d active", perConn, h.srv.Active())
	}
	// An idle connection holds no read-ahead buffer: 2000 of them stay well
	// under 100 MiB.
	if heapPerConn > 32<<10 {
		t.Fatalf("heap +%d KiB per idle connection, want at most 32 KiB", heapPerConn>>10)
	}

	c := h.dial0(t)
	p, err := c.r.ReadPacket()
	if e, ok := p.(*pmxproto.Error); err != nil || !ok || e.Code != pmxproto.ErrorBusy || !strings.Contains(e.Reason, "too many connections") {
		t.Fatalf("connection %d: %+v %v, want Error(Busy) saying too many connections", n+1, p, err)
	}
	c.expectClosed()
}

// pmxclient.Dial beyond MaxConns says why it was refused.
func TestMaxConnsRefusalReachesClient(t *testing.T) {
	h := newHarness(t, func(s *pmx.Server) { s.MaxConns = 1 })
	h.dial(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := pmxclient.Dial(ctx, h.addr, nil)
	if !errors.Is(err, pmxclient.ErrBusy) || !strings.Contains(err.Error(), "too many connections") {
		t.Fatalf("Dial beyond MaxConns: %v, want ErrBusy saying too many connections", err)
	}
}

// dial0 connects without expecting Hello.
func (h *harness) dial0(t *testing.T) *client {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, conn: c, r: pmxproto.NewReader(c)}
}

// A client sending nothing is closed at the idle timeout, in any state.
func TestIdleTimeoutInEveryState(t *testing.T) {
	h := newHarness(t, func(s *pmx.Server) { s.IdleTimeout = 300 * time.Millisecond })
	c := h.dial(t) // after Hello
	c.expectClosed()
	c = h.dial(t) // with an open backup file
	c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "h", Name: "s"})
	c.expectClosed()
}

// Pipelined BackupFinished(id) and CreateBackup(id) are answered in that
// order: the Create waits for the Finished's Ok, other ids do not.
func TestPipelinedFinishedThenCreateInOrder(t *testing.T) {
	onBothTransports(t, testPipelinedFinishedThenCreateInOrder)
}

func testPipelinedFinishedThenCreateInOrder(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	d := c.upload(1, []byte("chunk"))
	create := func(i int) *pmxproto.CreateBackup {
		return &pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "h", Name: fmt.Sprintf("f%d", i)}
	}
	c.create(create(0))
	for i := 1; i <= 30; i++ {
		c.send(&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}},
			&pmxproto.BackupFinished{ID: 2}, create(i))
		c.expectOk(2)
		if p, ok := c.next().(*pmxproto.BackupCreated); !ok || p.ID != 2 {
			t.Fatalf("round %d: %+v after Ok(2), want BackupCreated(2)", i, p)
		}
	}
}

// A refused entry is answered when refused, before BackupFinished.
func TestRefusedEntryAnsweredBeforeFinished(t *testing.T) {
	onBothTransports(t, testRefusedEntryAnsweredBeforeFinished)
}

func testRefusedEntryAnsweredBeforeFinished(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	c.create(&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: ts, Flags: pmxproto.FlagDynamicChunks, BackupID: "h", Name: "s"})
	missing := pmxproto.Digest(sha256.Sum256([]byte("never uploaded")))
	c.send(&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: missing}}})
	c.expectError(2, pmxproto.ErrorGeneric, "not stored") // no BackupFinished sent yet
	c.send(&pmxproto.BackupFinished{ID: 2})
	c.expectError(2, pmxproto.ErrorGeneric, "refused")
}

// A chunk larger than format.MaxChunk fits an UploadChunk packet but could
// not be restored: refused at once, and the connection goes on.
func TestOversizedUploadRefused(t *testing.T) { onBothTransports(t, testOversizedUploadRefused) }

func testOversizedUploadRefused(t *testing.T, tr transport) {
	h := newHarnessOn(t, tr)
	c := h.dial(t)
	data := bytes.Repeat([]byte("x"), pmxproto.MaxBodySize-pmxproto.DigestSize)
	if len(data) <= format.MaxChunk {
		t.Skipf("an UploadChunk holds at most %d bytes, not above MaxChunk %d", len(data), format.MaxChunk)
	}
	_, up := uploadOf(data)
	up.ID = 3
	c.send(up)
	c.expectError(3, pmxproto.ErrorGeneric, "exceed")
	c.upload(3, []byte("small"))
}

// More connections pipelining downloads they never read than the
// process's shared budget has room for: together they hold that budget,
// not their number times their reply queues; once another client waits
// for it, they are cut after the stall timeout, and it is served.
func TestManyPipelinedDownloadsShareOneBudget(t *testing.T) {
	onBothTransports(t, func(t *testing.T, tr transport) {
		const sharedBytes, conns = 16 << 20, 10
		shared := session.NewBudget(sharedBytes)
		h := newHarnessOn(t, tr, func(s *pmx.Server) {
			s.Shared = shared
			// What ends them under pressure; shorter than the default 5s
			// so that the rounds a waiter sits through are short.
			s.StallTimeout = time.Second
			s.DownloadBytes = 4 << 20         // four connections fit at once
			s.WriteTimeout = 10 * time.Minute // not what ends them
		})
		c := h.dial(t)
		var digests []pmxproto.Digest
		for i := range 4 {
			digests = append(digests, c.upload(1, bytes.Repeat([]byte{byte(i)}, 4<<20)))
		}
		heapBefore, _ := heap()
		var hostile []*client
		for range conns {
			hc := h.dial(t)
			hc.conn.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
			var reqs []pmxproto.Packet
			for i := range 200 {
				reqs = append(reqs, &pmxproto.DownloadChunks{ID: uint8(i), Digests: digests})
			}
			hc.send(reqs...) // and never read
			hostile = append(hostile, hc)
		}
		for deadline := time.Now().Add(30 * time.Second); shared.InUse() < sharedBytes; {
			if time.Now().After(deadline) {
				t.Fatalf("the stalled connections hold %d bytes of the shared budget", shared.InUse())
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond)
		heapStalled, _ := heap()
		grown := int64(heapStalled) - int64(heapBefore)
		t.Logf("%d connections with 200 pipelined downloads each, never read: heap +%d MiB", conns, grown>>20)
		// Without the shared budget: 10 reply queues of 64 MiB.
		// Every chunk is the same size, so nothing overdraws; the rest is
		// per connection: its read-ahead, lanes and queued requests.
		if got := shared.InUse(); got > sharedBytes {
			t.Errorf("shared budget %d in use, size %d", got, sharedBytes)
		}
		bound := int64(sharedBytes + 16<<20)
		if tr.name == "grpc" {
			// Over gRPC the transport also keeps pooled, chunk-sized
			// receive buffers (internal/grpcfast's tiers) that a GC does
			// not take while the streams live: measured up to 21 MiB more
			// under -race on a loaded machine.
			bound += sharedBytes + 8<<20
		}
		if grown > bound {
			t.Errorf("heap grew by %d MiB, bound %d MiB (shared budget %d MiB)", grown>>20, bound>>20, sharedBytes>>20)
		}

		start := time.Now()
		other := h.dial(t)
		other.conn.SetDeadline(time.Now().Add(2 * time.Minute))
		d := other.upload(1, []byte("still served"))
		other.send(&pmxproto.DownloadChunks{ID: 2, Digests: []pmxproto.Digest{d, digests[0]}})
		if ch, ok := other.next().(*pmxproto.Chunk); !ok || string(ch.Data) != "still served" {
			t.Fatalf("second client: %+v", ch)
		}
		if ch, ok := other.next().(*pmxproto.Chunk); !ok || !bytes.Equal(ch.Data, bytes.Repeat([]byte{0}, 4<<20)) {
			t.Fatalf("second client's big chunk: %T", ch)
		}
		t.Logf("another client was served in %v", time.Since(start))
		for _, hc := range hostile {
			hc.conn.Close()
		}
		for deadline := time.Now().Add(30 * time.Second); shared.InUse() != 0; {
			if time.Now().After(deadline) {
				t.Fatalf("%d bytes of the shared budget still held after the connections closed", shared.InUse())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// A client blocks one lane with a DownloadChunks it never reads, then
// streams 16 MiB packets only a server sends (HashListPart, Chunk) on that
// id: they are refused unread and answered at once, never queued behind
// the lane at a nominal size, so the request budget bounds the heap.
func TestServerPacketsFromClientRefusedUnread(t *testing.T) {
	const requestBytes = 1 << 20
	h := newHarness(t, func(s *pmx.Server) { s.RequestBytes = requestBytes })
	c := h.dial(t)
	big := c.upload(1, bytes.Repeat([]byte{7}, 4<<20))
	heapBefore, _ := heap()

	hostile := h.dial(t)
	hostile.conn.SetDeadline(time.Now().Add(2 * time.Minute))
	digests := make([]pmxproto.Digest, 100) // 400 MiB, never read
	for i := range digests {
		digests[i] = big
	}
	hostile.send(&pmxproto.DownloadChunks{ID: 5, Digests: digests})
	part := &pmxproto.HashListPart{ID: 5, Digests: make([]pmxproto.Digest, (pmxproto.MaxBodySize)/pmxproto.DigestSize)}
	partWire := part.Encode(nil)
	chunk := (&pmxproto.Chunk{ID: 5, Digest: big, Data: make([]byte, pmxproto.MaxBodySize-8-pmxproto.DigestSize)}).Encode(nil)
	const packets = 24
	for i := range packets {
		b := partWire
		if i%2 == 1 {
			b = chunk
		}
		if _, err := hostile.conn.Write(b); err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
	partWire, chunk = nil, nil
	// GetHashLists on the blocked lane count their 64 KiB each: the read
	// loop stops at the request budget instead of queuing them at 64 bytes.
	// (Sent aside: the server stops reading them.)
	var lists []byte
	for range 4 * requestBytes / 0xffff {
		lists = (&pmxproto.GetHashList{ID: 5, Name: strings.Repeat("n", 0xffff)}).Encode(lists)
	}
	go hostile.conn.Write(lists)
	other := h.dial(t)
	other.upload(2, []byte("still served"))
	time.Sleep(200 * time.Millisecond)

	heapAfter, _ := heap()
	grown := int64(heapAfter) - int64(heapBefore)
	t.Logf("%d packets of 16 MiB a server sends, from a client on a blocked lane: heap +%d MiB", packets, grown>>20)
	// The blocked download's share and reply queue, the chunk service's
	// read-ahead: never the 384 MiB sent.
	if grown > 96<<20 {
		t.Fatalf("heap grew by %d MiB with a request budget of %d MiB", grown>>20, requestBytes>>20)
	}
}

// A DownloadChunks listing a 1-byte chunk, then many 8 MiB ones, never
// read: the estimate per chunk is the largest seen, not the average, and
// a chunk above its estimate ends its batch, so each connection overdraws
// the shared budget by one chunk at most.
func TestTinyThenHugeChunksOverdrawOnce(t *testing.T) {
	onBothTransports(t, func(t *testing.T, tr transport) {
		const sharedBytes, chunkBytes, conns = 16 << 20, 8 << 20, 2
		shared := session.NewBudget(sharedBytes)
		h := newHarnessOn(t, tr, func(s *pmx.Server) {
			s.Shared = shared
			s.WriteTimeout = 10 * time.Minute
		})
		c := h.dial(t)
		digests := []pmxproto.Digest{c.upload(1, []byte{1})}
		var big []pmxproto.Digest
		for i := range 4 {
			big = append(big, c.upload(1, bytes.Repeat([]byte{byte(i)}, chunkBytes)))
		}
		for i := range 200 {
			digests = append(digests, big[i%len(big)])
		}
		heapBefore, _ := heap()
		for range conns {
			hc := h.dial(t)
			hc.conn.(interface{ SetReadBuffer(int) error }).SetReadBuffer(4 << 10)
			hc.send(&pmxproto.DownloadChunks{ID: 3, Digests: digests}) // and never read
		}
		time.Sleep(2 * time.Second)
		heapStalled, _ := heap()
		peak := shared.Peak() // the budget keeps its own high-water mark: no sample misses it
		grown := int64(heapStalled) - int64(heapBefore)
		t.Logf("%d connections, a 1-byte chunk then 200 of 8 MiB, never read: shared budget peak %d MiB of %d, heap +%d MiB", conns, peak>>20, sharedBytes>>20, grown>>20)
		if bound := int64(sharedBytes + conns*chunkBytes); peak > bound {
			t.Errorf("shared budget in use peaked at %d MiB, want at most %d MiB (budget and one chunk per connection)", peak>>20, bound>>20)
		}
		// What the budget counts, and per connection the chunk service's
		// read-ahead of one chunk.
		if bound := int64(sharedBytes + 2*conns*chunkBytes + 16<<20); grown > bound {
			t.Errorf("heap grew by %d MiB, want at most %d MiB", grown>>20, bound>>20)
		}
	})
}
