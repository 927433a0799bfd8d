package casync

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/tcpserver"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = tcpserver.ErrServerClosed

// Server accepts caprotocol sessions over TCP. Each connection starts with a
// preamble (see ReadPreamble) carrying casync's remote argv and, in version
// 2, the client's token.
type Server struct {
	Handler *Handler
	// PreambleTimeout bounds the wait for the preamble (default 5s): the
	// shim sends it in one write at connect, and until it has arrived an
	// unauthenticated connection holds a slot and a buffer.
	PreambleTimeout time.Duration
	// MaxConns caps the sessions served at once (0: no cap); a connection
	// beyond it is answered with an ABORT saying so.
	MaxConns int
	// Authenticate, when set, turns the preamble's token into the
	// principal the session runs as (auth.NewContext): the gateway has
	// credentials. A preamble without a token (version 1, or version 2
	// with an empty one), and a token it refuses, get an ABORT (EACCES)
	// saying what to do, and no session. When nil, auth is off: both
	// versions are served, as auth.Anonymous, and a token is ignored.
	Authenticate func(token string) (auth.Principal, error)
	// Credentials, when set, end a session as soon as a change of the
	// credentials file makes its token name another principal or none
	// (auth.Registry.Follow).
	Credentials *auth.Registry

	once sync.Once
	tcp  tcpserver.Server
}

func (srv *Server) init() {
	srv.once.Do(func() {
		srv.tcp.Handle = srv.handle
		srv.tcp.MaxConns = srv.MaxConns
		srv.tcp.Refuse = srv.refuseBusy
		srv.tcp.Log = srv.Handler.Log
	})
}

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

// Active is how many sessions are being served (refused connections are
// not counted).
func (srv *Server) Active() int { return srv.tcp.Active() }

func (srv *Server) handle(c net.Conn) {
	log := srv.Handler.Log
	timeout := srv.PreambleTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	br := bufio.NewReaderSize(c, 64<<10)
	c.SetReadDeadline(time.Now().Add(timeout))
	pre, err := ReadPreamble(br)
	c.SetReadDeadline(time.Time{})
	conn := &tcpConn{Conn: c, r: br}
	var ve *PreambleVersionError
	if errors.As(err, &ve) {
		// The client speaks caprotocol next, so it can be told why.
		srv.Handler.refuse(context.Background(), conn, abortf(syscall.EPROTONOSUPPORT, "%v; upgrade the gateway, or use a client that sends version 2", err))
		return
	}
	if err != nil {
		if log != nil {
			log.Warn("casync connection refused", "remote", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	var args Args
	if len(pre.Words) > 0 {
		args, err = ParseArgs(pre.Words[1:]) // Words[0] is the remote program name
	} else {
		err = errors.New("empty preamble")
	}
	if err != nil {
		// The client speaks caprotocol next, so it can be told why.
		srv.Handler.refuse(context.Background(), conn, abortf(syscall.EINVAL, "%v", err))
		return
	}
	ctx := context.Background()
	if srv.Authenticate != nil {
		p, err := srv.authenticate(pre)
		if err != nil {
			srv.Handler.audit("", args, err)
			srv.Handler.refuse(ctx, conn, err)
			return
		}
		ctx = auth.NewContext(ctx, p)
		var stop func()
		ctx, stop = srv.Credentials.Follow(ctx, p, func() (auth.Principal, error) { return srv.authenticate(pre) })
		defer stop()
	}
	srv.Handler.Serve(ctx, conn, args)
}

// authenticate checks the preamble's token; its errors are the ABORT the
// client reads, so they say what to do.
func (srv *Server) authenticate(pre Preamble) (auth.Principal, error) {
	if pre.Token == "" {
		sent := "preamble version 1, which has no token"
		if pre.Version > 1 {
			sent = fmt.Sprintf("preamble version %d without a token", pre.Version)
		}
		return auth.Principal{}, abortf(syscall.EACCES,
			"%v: this casync gateway needs a token: set CHUNKBRIDGE_TOKEN (or CHUNKBRIDGE_TOKEN_FILE, a file holding it) for chunkbridge-casync-ssh, which then sends it in preamble version 2 (this client sent %s)",
			apierr.ErrUnauthenticated, sent)
	}
	p, err := srv.Authenticate(pre.Token)
	if err != nil {
		return auth.Principal{}, abortf(syscall.EACCES,
			"%v: the token was refused (%v): check CHUNKBRIDGE_TOKEN or CHUNKBRIDGE_TOKEN_FILE", apierr.ErrUnauthenticated, err)
	}
	return p, nil
}

// refuseBusy answers a connection beyond MaxConns. The preamble is not
// read: the ABORT comes first, and the drain swallows the rest.
func (srv *Server) refuseBusy(c net.Conn) {
	err := abortf(syscall.EBUSY, "%v (%d casync sessions at most)", tcpserver.ErrTooManyConnections, srv.MaxConns)
	srv.Handler.refuse(context.Background(), c, err)
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
// gives the remote casync. Deadlines work where the files are pollable
// (non-blocking pipes and sockets); elsewhere SetReadDeadline and
// SetWriteDeadline fail and the session closes the files on a timer
// instead.
type StdioConn struct {
	In  *os.File
	Out *os.File
}

func (c StdioConn) Read(p []byte) (int, error)  { return c.In.Read(p) }
func (c StdioConn) Write(p []byte) (int, error) { return c.Out.Write(p) }

// SetReadDeadline sets the deadline of standard input.
func (c StdioConn) SetReadDeadline(t time.Time) error {
	if err := c.In.SetReadDeadline(t); err != nil {
		return fmt.Errorf("stdin: %w", err)
	}
	return nil
}

// SetWriteDeadline sets the deadline of standard output.
func (c StdioConn) SetWriteDeadline(t time.Time) error {
	if err := c.Out.SetWriteDeadline(t); err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	return nil
}

// CloseWrite closes standard output: the client sees end of stream.
func (c StdioConn) CloseWrite() error { return c.Out.Close() }

// Close closes both.
func (c StdioConn) Close() error {
	c.Out.Close()
	return c.In.Close()
}

var _ Conn = StdioConn{}
