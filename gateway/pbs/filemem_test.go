package pbs_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
)

// Sessions reading a large previous index (backup previous, reader
// download) share one file budget with room for one index at a time:
// while one holds its share the others wait, a waiter whose request is
// reset gets an error and holds nothing, and once the first is done the
// rest are served in turn, never more than the budget at once.
func TestFileBudgetServesInTurn(t *testing.T) {
	const entries = 1024
	cost := pbs.IndexCost(pbsindex.HeaderSize+entries*pbsindex.DynamicEntrySize, false)
	var srv *pbs.Server
	h := newHarnessWith(t, func(s *pbs.Server) { s.FileMemory = cost * 3 / 2; srv = s })
	const t1 = 1_700_000_000
	backupRun(t, h, t1, makeChunks(7, entries, 64))
	fb := pbs.FileBudget(srv)

	holding, waiting := make(chan struct{}, 16), make(chan struct{}, 16)
	waited, gate := make(chan error, 16), make(chan struct{})
	pbs.OnFileBudget(t, func() { waiting <- struct{}{} }, func(err error) { waited <- err }, func() {
		holding <- struct{}{}
		<-gate // the first holder keeps its share until the test lets it go
	})
	type result struct {
		st  int
		out []byte
	}
	results := make(chan result, 8)
	call := func(s *pbstest.Session, path string) {
		go func() {
			st, out := s.Call("GET", path, nil)
			results <- result{st, out}
		}()
	}
	const previous = "/previous?archive-name=root.pxar.didx"
	call(h.backup(t, t1+60), previous)
	servicetest.Recv(t, holding, "first share held")
	held := fb.InUse()
	if held <= 0 || held > fb.Size() {
		t.Fatalf("the first previous holds %d of %d bytes", held, fb.Size())
	}

	// A reader's download and two more sessions' previous wait.
	rd, err := h.open(t, "/api2/json/reader", pbs.ReaderProtocol, snapQuery(t1))
	if err != nil {
		t.Fatal(err)
	}
	call(rd, "/download?file-name=root.pxar.didx")
	servicetest.Recv(t, waiting, "wait of the reader's download")
	for i := range 2 {
		call(h.backup(t, t1+120+60*int64(i)), previous)
		servicetest.Recv(t, waiting, "wait of another session's previous")
	}

	// One more gives up while waiting: it holds nothing.
	late := h.backup(t, t1+600)
	ctx, cancel := context.WithCancel(t.Context())
	lateDone := make(chan int)
	go func() {
		st, _ := late.CallContext(ctx, "GET", previous, nil)
		lateDone <- st
	}()
	servicetest.Recv(t, waiting, "wait of the request to be reset")
	cancel()
	if err := servicetest.Recv(t, waited, "end of the reset request's wait"); !errors.Is(err, context.Canceled) {
		t.Fatalf("the reset request's wait ended with %v, want context.Canceled", err)
	}
	if st := servicetest.Recv(t, lateDone, "answer to the reset request"); st == http.StatusOK {
		t.Fatal("the reset request was answered 200")
	}
	if got := fb.InUse(); got != held || !fb.Pressed() {
		t.Fatalf("after the reset: %d bytes in use (want the first's %d), waiters %v", got, held, fb.Pressed())
	}

	close(gate)
	for range 4 {
		r := servicetest.Recv(t, results, "answer")
		if r.st != http.StatusOK {
			t.Fatalf("a waiting request got %d %.300s, want it served in turn", r.st, r.out)
		}
		d, err := pbsidx.ParseDynamic(r.out, 0)
		if err != nil || len(d.Entries) != entries {
			t.Fatalf("served index: %v, %d entries, want %d", err, len(d.Entries), entries)
		}
	}
	if fb.Peak() > fb.Size() || fb.Peak() < held {
		t.Fatalf("peak %d bytes of a %d-byte budget (one share is %d)", fb.Peak(), fb.Size(), held)
	}
	if got := fb.InUse(); got != 0 {
		t.Fatalf("%d bytes still held once every request is answered", got)
	}
}

// A session's manifest holds its share of the file budget from its upload
// until finish stores it; other blobs only while they are stored.
func TestFileBudgetHoldsManifestUntilFinish(t *testing.T) {
	var srv *pbs.Server
	h := newHarnessWith(t, func(s *pbs.Server) { srv = s })
	const epoch = 1_700_000_000
	s := h.backup(t, epoch)
	fb := pbs.FileBudget(srv)
	log, _ := datablob.EncodeRaw([]byte("a log"))
	s.OK("POST", fmt.Sprintf("/blob?file-name=client.log.blob&encoded-size=%d", len(log)), log)
	if got := fb.InUse(); got != 0 {
		t.Fatalf("%d bytes held after a blob was stored", got)
	}
	mb, _ := datablob.EncodeRaw(fmt.Appendf(nil, `{"backup-type":"host","backup-id":"web1","backup-time":%d,"files":[],"unprotected":{},"signature":null}`, epoch))
	s.OK("POST", fmt.Sprintf("/blob?file-name=index.json.blob&encoded-size=%d", len(mb)), mb)
	if got := fb.InUse(); got != int64(len(mb)) {
		t.Fatalf("%d bytes held with a %d-byte manifest waiting for finish", got, len(mb))
	}
	s.OK("POST", "/finish", nil)
	if got := fb.InUse(); got != 0 {
		t.Fatalf("%d bytes held after finish", got)
	}
}
