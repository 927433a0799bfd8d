// Package tcpserver is the accept loop of the raw-TCP gateways, modelled on
// net/http.Server: Serve runs each connection in its own goroutine and
// tracks it, so that Shutdown can stop accepting, wait for connections to
// end, and close the ones left when its context ends. Running out of file
// descriptors or memory is a temporary accept error: Serve backs off and
// goes on, as net/http does, rather than ending every listener of the
// process. MaxConns caps the connections served at once; beyond it a
// connection gets the protocol's refusal and is closed.
package tcpserver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Server serves connections with Handle.
type Server struct {
	// Handle serves one connection; the server closes it when Handle
	// returns.
	Handle func(net.Conn)
	// Wrap, if set, wraps each accepted connection (TLS).
	Wrap func(net.Conn) net.Conn
	// MaxConns caps the connections handled at once (0: no cap).
	MaxConns int
	// Refuse answers a connection beyond MaxConns with the protocol's
	// refusal (a PMXBCKUP Error, a casync ABORT); the server closes it
	// afterwards. It runs in its own goroutine and must bound its own time.
	// Nil: the connection is closed at once.
	Refuse func(net.Conn)
	// Log, if set, reports accept errors and refusals.
	Log *slog.Logger
	// sleep waits out an accept backoff; tests replace it.
	sleep func(time.Duration)

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]struct{}
	closing bool
	active  int // connections being handled, not refused
	// refusing counts refusals in progress, at most maxRefusing.
	refusing int
	wg       sync.WaitGroup
}

// maxRefusing bounds the refusals written at once; beyond it a connection
// over MaxConns is closed without a reason.
const maxRefusing = 64

// ErrTooManyConnections is the reason a connection beyond MaxConns is
// refused.
var ErrTooManyConnections = errors.New("too many connections to this server; try again later")

// Temporary reports accept errors that pass: out of file descriptors
// (EMFILE, ENFILE), of memory or buffers (ENOMEM, ENOBUFS), a connection
// aborted before it was accepted, or a timeout.
func Temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM, syscall.ENOBUFS, syscall.ECONNABORTED, syscall.ECONNRESET} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Server) refuse(c net.Conn) {
	if s.Log != nil {
		s.Log.Warn("connection refused", "remote", c.RemoteAddr().String(), "reason", ErrTooManyConnections, "max_conns", s.MaxConns)
	}
	if s.Refuse != nil {
		s.Refuse(c)
	}
}

func (s *Server) wait(d time.Duration) {
	if s.sleep != nil {
		s.sleep(d)
		return
	}
	time.Sleep(d)
}

// Active is how many connections are being handled (refused ones are not
// counted).
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// Serve accepts connections until Shutdown. A failing connection never
// affects another.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.ln = ln
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.mu.Unlock()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			if !Temporary(err) {
				return err
			}
			// Out of descriptors or memory: wait for connections to end
			// instead of spinning or giving up (net/http's 5ms..1s).
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if s.Log != nil {
				s.Log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
			}
			s.wait(backoff)
			continue
		}
		backoff = 0
		if s.Wrap != nil {
			c = s.Wrap(c)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		// Over the cap, the connection is tracked (Shutdown closes it) but
		// only refused, not handled.
		over := s.MaxConns > 0 && s.active >= s.MaxConns
		if over && s.refusing >= maxRefusing {
			// A flood: refusals are not free either.
			s.mu.Unlock()
			c.Close()
			continue
		}
		if over {
			s.refusing++
		} else {
			s.active++
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				if over {
					s.refusing--
				} else {
					s.active--
				}
				s.mu.Unlock()
				s.wg.Done()
			}()
			if over {
				s.refuse(c)
				return
			}
			s.Handle(c)
		}()
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting and waits for the connections to end until ctx
// ends, then closes those still open and waits for their handlers.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Closed outside the lock: a TLS connection's Close may block for
	// seconds on a peer that reads nothing.
	s.mu.Lock()
	open := make([]net.Conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	<-done
	return ctx.Err()
}
