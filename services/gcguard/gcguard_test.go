package gcguard_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
)

func id(b byte) chunk.ID { return chunk.ID{b} }

func set(ids ...chunk.ID) gcguard.IDs {
	s := gcguard.IDs{}
	for _, i := range ids {
		s[i] = struct{}{}
	}
	return s
}

// protectedIn reports what a delete batch of run would have to spare.
func protectedIn(run *gcguard.Run, ids ...chunk.ID) []bool {
	out := make([]bool, len(ids))
	run.Check(func(p func(chunk.ID) bool) {
		for i, x := range ids {
			out[i] = p(x)
		}
	})
	return out
}

func TestOneRunAtATime(t *testing.T) {
	g := gcguard.New()
	run, err := g.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Begin(); !errors.Is(err, gcguard.ErrRunning) {
		t.Fatalf("second Begin = %v, want ErrRunning", err)
	}
	run.End()
	run, err = g.Begin()
	if err != nil {
		t.Fatalf("Begin after End = %v", err)
	}
	run.End()
}

func TestCommitsDuringAndBeforeARunAreKept(t *testing.T) {
	g := gcguard.New()
	// Registered before the run and still publishing when it starts.
	pending, recheck := g.Commit(g.Ticket(), set(id(1)))
	if recheck {
		t.Fatal("recheck without any delete")
	}
	// Registered and done before the run: the run's mark sees its file.
	done, _ := g.Commit(g.Ticket(), set(id(2)))
	done.Done()
	run, _ := g.Begin()
	defer run.End()
	during, _ := g.Commit(g.Ticket(), set(id(3)))
	during.Done() // published during the run: still kept by this run
	pending.Done()
	got := protectedIn(run, id(1), id(2), id(3), id(4))
	if want := []bool{true, false, true, false}; !slices.Equal(got, want) {
		t.Fatalf("protected = %v, want %v", got, want)
	}
}

func TestDeleteBatchSinceTicketAsksForRecheck(t *testing.T) {
	g := gcguard.New()
	before := g.Ticket()
	run, _ := g.Begin()
	if err := run.Delete(func(func(chunk.ID) bool) error { return nil }); err != nil {
		t.Fatal(err)
	}
	after := g.Ticket()
	if c, recheck := g.Commit(before, set(id(1))); !recheck {
		t.Fatal("a commit checked before a delete batch is not told to recheck")
	} else {
		c.Done()
	}
	if c, recheck := g.Commit(after, set(id(1))); recheck {
		t.Fatal("a commit checked after the last batch is told to recheck")
	} else {
		c.Done()
	}
	run.End()
	// A whole run that deleted between ticket and commit counts too.
	t0 := g.Ticket()
	run, _ = g.Begin()
	run.Delete(func(func(chunk.ID) bool) error { return errors.New("failed half way") })
	run.End()
	if _, recheck := g.Commit(t0, set(id(1))); !recheck {
		t.Fatal("a failed batch (which may have deleted some) does not ask for a recheck")
	}
}

// A commit waits for a running batch, and the batch does not see it.
func TestCommitWaitsForBatch(t *testing.T) {
	g := gcguard.New()
	run, _ := g.Begin()
	defer run.End()
	ticket := g.Ticket()
	registered := make(chan bool)
	err := run.Delete(func(p func(chunk.ID) bool) error {
		go func() {
			c, recheck := g.Commit(ticket, set(id(9)))
			c.Done()
			registered <- recheck
		}()
		for g.Waiting() == 0 {
			time.Sleep(time.Millisecond)
		}
		select {
		case <-registered:
			t.Error("a commit registered while a delete batch ran")
		default:
		}
		if p(id(9)) {
			t.Error("the batch sees a commit that registered after it")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !<-registered {
		t.Fatal("the commit that waited for the batch is not told to recheck")
	}
	if got := protectedIn(run, id(9)); !got[0] {
		t.Fatal("later batches do not spare the commit's chunks")
	}
}
