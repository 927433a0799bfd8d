package session

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two sessions share one budget: what one holds the other waits for; the
// writer gives a frame's bytes back once written, and a session that ends
// gives back everything it still holds.
func TestSharedBudgetAcrossSessions(t *testing.T) {
	shared := NewBudget(1 << 20)
	newSession := func() (*Session, net.Conn) {
		server, peer := net.Pipe()
		t.Cleanup(func() { peer.Close() })
		return New(t.Context(), server, Config{Shared: shared, WriteTimeout: time.Minute, StallTimeout: 200 * time.Millisecond}), peer
	}
	a, aPeer := newSession()
	b, bPeer := newSession()
	go io.Copy(io.Discard, bPeer) // b's peer reads; a's never does

	if err := a.Hold(a.Context(), 1<<20); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 1<<20)
	if err := a.SendBuffers(a.Context(), func() { a.Unhold(1 << 20) }, []byte("head"), data); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Run(func(ctx context.Context) error { <-ctx.Done(); return nil }) }()

	// b waits: a holds the whole budget. Under that pressure a's write
	// gets the stall timeout, not the minute of WriteTimeout.
	start := time.Now()
	if err := b.Hold(b.Context(), 64<<10); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("b waited %v for a stalled session", d)
	}
	err := <-aDone
	if err == nil || !strings.Contains(err.Error(), "shared buffer") {
		t.Fatalf("stalled a ended with %v, want the stall timeout", err)
	}
	if a.Held() != 0 {
		t.Fatalf("a still holds %d after its end", a.Held())
	}
	if err := a.Hold(t.Context(), 1); err == nil {
		t.Fatal("Hold after the end succeeded")
	}
	a.Unhold(1 << 20) // late releases after the end are no-ops
	if got := shared.InUse(); got != 64<<10 {
		t.Fatalf("shared InUse = %d, want b's 64 KiB", got)
	}
	// b's frame is written (its peer reads): done gives the bytes back.
	written := make(chan struct{})
	if err := b.SendBuffers(b.Context(), func() { b.Unhold(64 << 10); close(written) }, []byte("h"), data[:64<<10]); err != nil {
		t.Fatal(err)
	}
	<-written
	if got := shared.InUse(); got != 0 {
		t.Fatalf("shared InUse = %d after b's frame was written", got)
	}
	_ = aPeer
	b.End(nil)
	b.Run(func(ctx context.Context) error { return nil })
}

// The buffers of one SendBuffers reach the peer contiguously, whatever
// other frames are sent at the same time.
func TestSendBuffersKeepsFramesContiguous(t *testing.T) {
	server, peer := net.Pipe()
	s := New(t.Context(), server, Config{BufferSize: 16})
	const senders, frames = 4, 50
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(peer); got <- b }()
	s.Run(func(ctx context.Context) error {
		var wg sync.WaitGroup
		for g := range senders {
			wg.Go(func() {
				body := bytes.Repeat([]byte{byte('a' + g)}, 100)
				for range frames {
					if err := s.SendBuffers(ctx, nil, []byte{'<', byte('a' + g)}, body, []byte{'>'}); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return nil // what is queued is written before the end
	})
	out := <-got
	if len(out) != senders*frames*103 {
		t.Fatalf("read %d bytes, want %d", len(out), senders*frames*103)
	}
	for len(out) > 0 {
		f := out[:103]
		g := f[1]
		if f[0] != '<' || f[102] != '>' || !bytes.Equal(f[2:102], bytes.Repeat([]byte{g}, 100)) {
			t.Fatalf("frame interleaved: %q", f)
		}
		out = out[103:]
	}
}
