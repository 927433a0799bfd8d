package chunk

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/auth"
)

// watch is one download or read stream as a holder of the stream budget
// (budget.Holder): while another stream waits for the budget, a send of
// this one that has waited StallTimeout for its client ends the stream,
// so that a client that reads nothing cannot keep what others wait for.
type watch struct {
	srv     *Server
	name    string       // method, principal and peer, for errors and logs
	held    atomic.Int64 // bytes of the budget its reads hold
	stalled chan struct{}
	once    sync.Once // closes stalled

	mu      sync.Mutex
	sending bool
	send    int // counts sends, so that a late timer of an earlier one does nothing
	timer   *time.Timer
}

func (s *Server) watch(ctx context.Context, method string) *watch {
	name := method
	if p, ok := auth.Authenticated(ctx); ok {
		name += " of " + p.Name
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		name += " from " + p.Addr.String()
	}
	w := &watch{srv: s, name: name, stalled: make(chan struct{})}
	s.budget.SetHolder(w, true)
	return w
}

// done ends the watch once the handler returns.
func (w *watch) done() {
	w.srv.budget.SetHolder(w, false)
	w.mu.Lock()
	w.disarm()
	w.mu.Unlock()
}

// charge is a new read's share of the budget, counted as the stream's.
func (w *watch) charge() *charge { return &charge{b: w.srv.budget, held: &w.held} }

// Squeeze starts the stall timer of the send in progress, if any.
func (w *watch) Squeeze() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.arm()
}

// arm starts the stall timer of the send in progress: only a stream that
// holds part of the budget gives it up. Called with w.mu held.
func (w *watch) arm() {
	if !w.sending || w.timer != nil || w.held.Load() == 0 {
		return
	}
	n := w.send
	w.timer = time.AfterFunc(w.srv.stall, func() { w.expire(n) })
}

func (w *watch) disarm() {
	if w.timer != nil {
		w.timer.Stop()
		w.timer = nil
	}
}

// expire ends the stream if send n still waits and others still wait for
// the budget; a send whose waiters were served meanwhile goes on.
func (w *watch) expire(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n != w.send || !w.sending {
		return
	}
	w.timer = nil
	if !w.srv.budget.Pressed() {
		return
	}
	w.once.Do(func() {
		w.srv.svc.log.Warn("chunk stream ended: its client read nothing while others waited for stream memory",
			"stream", w.name, "stall", w.srv.stall, "held_bytes", w.held.Load())
		if w.srv.onStall != nil {
			w.srv.onStall(w.name)
		}
		close(w.stalled)
	})
}

// sendOne runs send, the stream's Send of one response, under the watch.
func (w *watch) sendOne(send func() error) error {
	w.mu.Lock()
	w.sending = true
	w.send++
	if w.srv.budget.Pressed() {
		w.arm()
	}
	w.mu.Unlock()
	err := send()
	w.mu.Lock()
	w.sending = false
	w.disarm()
	w.mu.Unlock()
	return err
}

// wait waits for the result of the stream's sender or receiver, or for the
// watch to end the stream (stalled). The handler then returns at once:
// gRPC ends the stream, which fails the send still blocked.
func (w *watch) wait(result <-chan error) (stalled bool, err error) {
	select {
	case err := <-result:
		return false, err
	case <-w.stalled:
		return true, status.Error(codes.ResourceExhausted, fmt.Sprintf(
			"chunk service: %s: ended because the client read nothing for %v while other streams waited for the server's stream memory (serve --stream-memory-bytes); read responses as they arrive, or ask for fewer chunks at once",
			w.name, w.srv.stall))
	}
}
