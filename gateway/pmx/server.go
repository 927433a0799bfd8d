// Package pmx is the PMXBCKUP gateway: the early Proxmox Backup binary
// protocol (packets of gateway/pmx/wire) in front of the chunk service and
// the catalog, with the original's gaps closed as DESIGN §7 decides. It
// holds no data: chunks go to ChunkService, index entries to the catalog,
// which publishes a file only when BackupFinished commits it.
package pmx

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("pmx gateway closed")

// Server accepts PMXBCKUP connections.
type Server struct {
	Chunks  ChunkClient
	Catalog CatalogClient
	Log     *slog.Logger
	// TLS, when set, wraps every connection.
	TLS *tls.Config

	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// Serve accepts connections until Shutdown; each runs independently, and a
// bad one never affects another.
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
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if s.TLS != nil {
			c = tls.Server(c, s.TLS)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				s.wg.Done()
			}()
			s.serveConn(c)
		}()
	}
}

// Shutdown stops accepting and waits for connections until ctx ends, then
// closes them (their unfinished files are never published).
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
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
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
	go cn.writer(bufio.NewWriterSize(c, 256<<10))
	err := cn.run()
	cn.finish(err)
}

// idleTimeout closes a connection that sends nothing for this long.
const idleTimeout = 10 * time.Minute
