package casync

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("casync gateway closed")

// Server accepts caprotocol sessions over TCP. Each connection starts with a
// preamble (see WritePreamble) carrying casync's remote argv.
type Server struct {
	Handler *Handler
	// PreambleTimeout bounds the wait for the preamble (default 30s).
	PreambleTimeout time.Duration

	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]struct{}
	closing  bool
	sessions sync.WaitGroup
}

// Serve accepts connections until Shutdown. One session failing never
// affects another.
func (srv *Server) Serve(ln net.Listener) error {
	srv.mu.Lock()
	if srv.closing {
		srv.mu.Unlock()
		return ErrServerClosed
	}
	srv.ln = ln
	if srv.conns == nil {
		srv.conns = map[net.Conn]struct{}{}
	}
	srv.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			srv.mu.Lock()
			closing := srv.closing
			srv.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		srv.mu.Lock()
		if srv.closing {
			srv.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		srv.conns[c] = struct{}{}
		srv.sessions.Add(1)
		srv.mu.Unlock()
		go srv.handle(c)
	}
}

func (srv *Server) handle(c net.Conn) {
	defer func() {
		srv.mu.Lock()
		delete(srv.conns, c)
		srv.mu.Unlock()
		srv.sessions.Done()
	}()
	log := srv.Handler.Log
	timeout := srv.PreambleTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	br := bufio.NewReaderSize(c, 64<<10)
	c.SetReadDeadline(time.Now().Add(timeout))
	words, err := ReadPreamble(br)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		if log != nil {
			log.Warn("casync connection refused", "remote", c.RemoteAddr().String(), "err", err)
		}
		c.Close()
		return
	}
	conn := &tcpConn{Conn: c, r: br}
	var args Args
	if len(words) > 0 {
		args, err = ParseArgs(words[1:]) // words[0] is the remote program name
	} else {
		err = errors.New("empty preamble")
	}
	if err != nil {
		// The client speaks caprotocol next, so it can be told why.
		srv.Handler.refuse(conn, err)
		return
	}
	srv.Handler.Serve(context.Background(), conn, args)
}

// Shutdown stops accepting, then waits for sessions to end until ctx ends,
// then closes the remaining connections.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.mu.Lock()
	srv.closing = true
	if srv.ln != nil {
		srv.ln.Close()
	}
	srv.mu.Unlock()
	done := make(chan struct{})
	go func() { srv.sessions.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	srv.mu.Lock()
	for c := range srv.conns {
		c.Close()
	}
	srv.mu.Unlock()
	<-done
	return ctx.Err()
}

// tcpConn reads through the buffer that held the preamble.
type tcpConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *tcpConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *tcpConn) CloseWrite() error {
	if tc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return tc.CloseWrite()
	}
	return nil
}

// StdioConn is a session on a process's standard input and output, as ssh
// gives the remote casync.
type StdioConn struct {
	In  *os.File
	Out *os.File
}

func (c StdioConn) Read(p []byte) (int, error)  { return c.In.Read(p) }
func (c StdioConn) Write(p []byte) (int, error) { return c.Out.Write(p) }

// CloseWrite closes standard output: the client sees end of stream.
func (c StdioConn) CloseWrite() error { return c.Out.Close() }

// Close closes both.
func (c StdioConn) Close() error {
	c.Out.Close()
	return c.In.Close()
}

var _ io.ReadWriter = StdioConn{}
