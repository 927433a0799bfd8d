package client

import (
	"context"
	"io"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// endedStream is an upload stream the server has ended with a status, as
// gRPC shows it: the first send went out, later sends say io.EOF, and the
// status comes from recv (here once the test lets it).
type endedStream struct {
	mu     sync.Mutex
	sent   int
	status error
	recvOK chan struct{}
}

func (s *endedStream) send(*Upload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent++; s.sent > 1 {
		return io.EOF
	}
	return nil
}

func (s *endedStream) recv() (bool, error, error) {
	<-s.recvOK
	return false, nil, s.status
}

func (s *endedStream) closeSend() error { return nil }

type streamTransport struct {
	transport
	s upStream
}

func (t streamTransport) openUpload(context.Context, int) (upStream, error) { return t.s, nil }

// A stream the server ended answers every chunk with the server's status
// (Unavailable here, so PMX says Busy and HTTP 503), not with the io.EOF
// gRPC's Send returns.
func TestUploadStreamEndedReportsServerStatus(t *testing.T) {
	st := &endedStream{status: status.Error(codes.Unavailable, "chunk service overloaded"), recvOK: make(chan struct{})}
	c := &Chunks{t: streamTransport{s: st}}
	u, err := c.NewUploader(t.Context(), UploadOptions{Window: 8})
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan Result, 3)
	for i := range 3 {
		if err := u.Put(t.Context(), Upload{ID: ID{byte(i)}, Data: []byte{byte(i)}}, func(r Result) { results <- r }); err != nil {
			t.Fatalf("Put %d: %v", i, err)
		}
	}
	close(st.recvOK)
	for i := range 3 {
		r := <-results
		if code := apierr.Code(r.Err); code != codes.Unavailable {
			t.Fatalf("chunk %d: %v (code %v), want Unavailable", i, r.Err, code)
		}
	}
	if err := u.Close(); apierr.Code(err) != codes.Unavailable {
		t.Fatalf("Close = %v, want Unavailable", err)
	}
}

// Put racing Close or Abort returns an error instead of sending on the
// closed queue.
func TestUploadPutAfterCloseFails(t *testing.T) {
	// Put chooses between a free slot and the ended context at random:
	// enough rounds that the slot is chosen.
	for range 32 {
		st := &endedStream{status: io.EOF, recvOK: make(chan struct{})}
		close(st.recvOK)
		c := &Chunks{t: streamTransport{s: st}}
		u, err := c.NewUploader(t.Context(), UploadOptions{Window: 8})
		if err != nil {
			t.Fatal(err)
		}
		u.Close()
		if err := u.Put(context.Background(), Upload{Data: []byte{1}}, func(Result) { t.Error("done called for a Put after Close") }); err == nil {
			t.Fatal("Put after Close succeeded")
		}
	}
}
