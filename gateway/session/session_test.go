package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// sendForever sends frames of size bytes until Send fails, counting them.
func sendForever(s *Session, size int, sent *atomic.Int64) chan error {
	done := make(chan error, 1)
	go func() {
		frame := bytes.Repeat([]byte("x"), size)
		for {
			if err := s.Send(s.Context(), frame); err != nil {
				done <- err
				return
			}
			sent.Add(1)
		}
	}()
	return done
}

// A peer that stops reading holds at most the queue and the write buffer,
// and ends the session at the write deadline.
func TestStalledReaderEndsAtWriteDeadlineWithBoundedQueue(t *testing.T) {
	server, peer := net.Pipe() // unbuffered: nothing is written unless read
	defer peer.Close()
	blocked := make(chan struct{}, 1)
	testHookSendBlocked = func() {
		select {
		case blocked <- struct{}{}:
		default:
		}
	}
	defer func() { testHookSendBlocked = nil }()

	const queue, buf, frame = 8 << 10, 4 << 10, 1 << 10
	s := New(t.Context(), server, Config{QueueBytes: queue, BufferSize: buf, WriteTimeout: 300 * time.Millisecond})
	var sent atomic.Int64
	sendDone := sendForever(s, frame, &sent)
	<-blocked // the queue is full: Send waits
	if q := s.Queued(); q > queue {
		t.Fatalf("%d bytes queued, bound %d", q, queue)
	}
	// Frames accepted: the queue, the write buffer, one frame being
	// written; nothing else holds memory.
	if n := sent.Load(); n > (queue+buf)/frame+1 {
		t.Fatalf("%d frames of %d bytes accepted while the peer read nothing; bound %d", n, frame, (queue+buf)/frame+1)
	}
	err := s.Run(func(ctx context.Context) error {
		<-ctx.Done() // the writer's deadline ends the session
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "read nothing") {
		t.Fatalf("Run = %v, want the write deadline", err)
	}
	if err := <-sendDone; err == nil || !strings.Contains(err.Error(), "session over") {
		t.Fatalf("Send after the end = %v", err)
	}
}

// A peer that sends nothing and has nothing to read is cut off at the idle
// deadline, by the Reader, in any state.
func TestIdlePeerEndsAtReadDeadline(t *testing.T) {
	server, peer := net.Pipe()
	defer peer.Close()
	go io.Copy(io.Discard, peer)
	s := New(t.Context(), server, Config{IdleTimeout: 200 * time.Millisecond})
	s.Send(s.Context(), []byte("hello"))
	err := s.Run(func(ctx context.Context) error {
		b := make([]byte, 10)
		_, err := s.Reader().Read(b)
		return err
	})
	var idle *IdleError
	if !errors.As(err, &idle) {
		t.Fatalf("Run = %v, want IdleError", err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("IdleError is not a net timeout: %v", err)
	}
}

// Traffic in either direction keeps a session alive: a peer reading a long
// reply while sending nothing is not idle.
func TestWritesKeepTheSessionAlive(t *testing.T) {
	server, peer := net.Pipe()
	defer peer.Close()
	const idle = 200 * time.Millisecond
	s := New(t.Context(), server, Config{IdleTimeout: idle, BufferSize: 16})
	read := make(chan int, 1)
	go func() {
		// Read frames slowly, 5 idle periods long in total.
		b := make([]byte, 16)
		n := 0
		for range 10 {
			m, err := io.ReadFull(peer, b)
			n += m
			if err != nil {
				break
			}
			time.Sleep(idle / 2)
		}
		read <- n
		peer.Write([]byte("bye"))
	}()
	for range 10 {
		s.Send(s.Context(), bytes.Repeat([]byte("y"), 16))
	}
	var got []byte
	err := s.Run(func(ctx context.Context) error {
		b := make([]byte, 3)
		_, err := io.ReadFull(s.Reader(), b)
		got = b
		return err
	})
	if err != nil || string(got) != "bye" || <-read != 10*16 {
		t.Fatalf("Run = %v, read %q", err, got)
	}
}

// The final frame comes after every queued frame, then end of stream; the
// peer still writing is drained, so it sees the frame rather than a reset.
func TestFinalFrameAfterQueueThenHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s := New(t.Context(), server, Config{DrainTimeout: 5 * time.Second})
	failure := errors.New("the request was refused")
	s.Send(s.Context(), []byte("one,"))
	s.Send(s.Context(), []byte("two,"))
	if !s.SetFinal([]byte("ABORT")) || s.SetFinal([]byte("later")) {
		t.Fatal("the first SetFinal must win")
	}
	// A worker's error ends the session and wakes the blocked main loop.
	s.Go(func(ctx context.Context) error { return failure })
	runErr := make(chan error, 1)
	mainDone := make(chan struct{})
	go func() {
		runErr <- s.Run(func(ctx context.Context) error {
			_, err := io.Copy(io.Discard, s.Reader()) // blocked until the end
			close(mainDone)
			return err
		})
	}()
	got, err := io.ReadAll(peer) // ends at the half-close
	if err != nil {
		t.Fatal(err)
	}
	if g := string(got); g != "one,two,ABORT" {
		t.Fatalf("peer read %q, want the queued frames then the final one", g)
	}
	// The peer, still sending, is drained until it closes. It writes once
	// the main loop has seen the end: bytes that reached the main loop's
	// pending Read first would be the main loop's, not the drain's.
	<-mainDone
	peer.Write(bytes.Repeat([]byte("z"), 1000))
	peer.Close()
	if err := <-runErr; !errors.Is(err, failure) {
		t.Fatalf("Run = %v, want %v", err, failure)
	}
	if n := s.drained.Load(); n != 1000 {
		t.Fatalf("drained %d bytes, want 1000", n)
	}
}
