package casync

import (
	"bufio"
	"context"
	"errors"

	"github.com/chunkbridge/chunkbridge/gateway/tcpserver"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = tcpserver.ErrServerClosed

// Server accepts caprotocol sessions over TCP. Each connection starts with a
// preamble (see WritePreamble) carrying casync's remote argv.
type Server struct {
	Handler *Handler
	// PreambleTimeout bounds the wait for the preamble (default 30s).
	PreambleTimeout time.Duration

	once sync.Once
	tcp  tcpserver.Server
}

func (srv *Server) init() { srv.once.Do(func() { srv.tcp.Handle = srv.handle }) }

// Serve accepts connections until Shutdown. One session failing never
// affects another.
func (srv *Server) Serve(ln net.Listener) error {
	srv.init()
	return srv.tcp.Serve(ln)
}

// Shutdown stops accepting, waits for sessions to end until ctx ends, then
// closes the remaining connections.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.init()
	return srv.tcp.Shutdown(ctx)
}

func (srv *Server) handle(c net.Conn) {
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
