package pmx

import (
	"bufio"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/gateway/tcpserver"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = tcpserver.ErrServerClosed

// Server accepts PMXBCKUP connections.
type Server struct {
	Chunks  ChunkClient
	Catalog CatalogClient
	Log     *slog.Logger
	// TLS, when set, wraps every connection.
	TLS *tls.Config
	// Metrics may be nil.
	Metrics *Metrics

	once sync.Once
	tcp  tcpserver.Server
}

func (s *Server) init() {
	s.once.Do(func() {
		s.tcp.Handle = s.serveConn
		if s.TLS != nil {
			s.tcp.Wrap = func(c net.Conn) net.Conn { return tls.Server(c, s.TLS) }
		}
	})
}

// Serve accepts connections until Shutdown; each runs independently, and a
// bad one never affects another.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	return s.tcp.Serve(ln)
}

// Shutdown stops accepting and waits for connections until ctx ends, then
// closes them (their unfinished files are never published).
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	return s.tcp.Shutdown(ctx)
}

func (s *Server) serveConn(c net.Conn) {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cn := &conn{
		srv: s, nc: c, log: log.With("remote", c.RemoteAddr().String()),
		ctx: ctx, cancel: cancel,
		out:     make(chan []byte, 64),
		streams: map[uint8]*fileStream{},
		created: map[string]bool{},
	}
	cn.acked = sync.NewCond(&cn.mu)
	// A connection that ends must wake the upload barrier: acknowledgements
	// it waits for will never come.
	stop := context.AfterFunc(ctx, func() {
		cn.mu.Lock()
		cn.acked.Broadcast()
		cn.mu.Unlock()
	})
	defer stop()
	if s.Metrics != nil {
		s.Metrics.connections.Inc()
	}
	go cn.writer(bufio.NewWriterSize(c, 256<<10))
	err := cn.run()
	cn.finish(err)
}

// idleTimeout closes a connection that sends nothing for this long.
const idleTimeout = 10 * time.Minute
