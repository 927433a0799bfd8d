package pmx

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/gateway/tcpserver"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = tcpserver.ErrServerClosed

// Server accepts PMXBCKUP connections.
type Server struct {
	// Chunks is the chunk service (client.NewGRPC, or client.NewLocal in
	// the same process); Catalog the catalog (client.NewCatalogGRPC).
	Chunks  *client.Chunks
	Catalog *client.Catalog
	Log     *slog.Logger
	// TLS, when set, wraps every connection.
	TLS *tls.Config
	// Authenticate, if set, names the principal a connection acts for,
	// from its TLS state once the handshake is done (nil on a plain
	// connection): PMXBCKUP has no credential of its own, so a client
	// certificate is the credential. An error refuses the connection: the
	// client reads an Error with the reason in place of Hello, before it
	// can send anything, and one "access refused" line is logged. Every
	// call the session makes carries the principal (auth.NewContext), and
	// the gateway and the services check each with auth.Check.
	//
	// Without it no principal is set: every connection is auth.Anonymous.
	Authenticate func(state *tls.ConnectionState) (auth.Principal, error)
	// Credentials, when set, end a connection as soon as a change of the
	// credentials file makes its certificate name another principal or
	// none (auth.Registry.Follow).
	Credentials *auth.Registry
	// Metrics may be nil.
	Metrics *Metrics

	// Per-listener and per-connection limits; zero takes the default.
	//
	// MaxConns caps the connections served at once (default 4096); beyond
	// it a client gets Error(Busy) instead of Hello, and is closed.
	MaxConns int
	// IdleTimeout closes a connection with no traffic either way (default
	// 10m); WriteTimeout one whose client reads nothing (default 1m).
	IdleTimeout, WriteTimeout time.Duration
	// HandshakeTimeout bounds a TLS handshake (default 30s): a connection
	// that never completes one does not hold a slot of MaxConns for the
	// idle timeout.
	HandshakeTimeout time.Duration
	// QueueBytes bounds the replies queued for a client, downloaded chunks
	// included (default 64 MiB); RequestBytes the packets read and not yet
	// handled (default 64 MiB).
	QueueBytes, RequestBytes int64
	// DownloadBytes bounds the chunk bytes of a connection's downloads
	// from the moment they are asked of the chunk service until written to
	// the client (default 16 MiB): its share of Shared.
	DownloadBytes int64
	// Shared, if set, is the process's budget of chunk data buffered for
	// clients, shared with every other session (of either gateway): the
	// sum over connections of what DownloadBytes allows each.
	Shared *session.Budget
	// StallTimeout replaces WriteTimeout for a session holding part of
	// Shared while others wait for it (default 5s; docs/session.md).
	StallTimeout time.Duration
	// MaxDownloads bounds the DownloadChunks a connection has waiting
	// (default 16); MaxOpenFiles its open backup files (default 16).
	MaxDownloads, MaxOpenFiles int

	once sync.Once
	tcp  tcpserver.Server
}

const (
	defaultMaxConns  = 4096
	defaultQueue     = 64 << 20
	defaultRequests  = 64 << 20
	defaultDLBytes   = 16 << 20
	defaultDownloads = 16
	defaultOpenFiles = 16
)

func (s *Server) maxOpenFiles() int { return session.OrDefault(s.MaxOpenFiles, defaultOpenFiles) }

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) init() {
	s.once.Do(func() {
		s.tcp.Handle = s.serveConn
		s.tcp.MaxConns = session.OrDefault(s.MaxConns, defaultMaxConns)
		s.tcp.Refuse = s.refuse
		s.tcp.Log = s.Log
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

// Active is how many connections are being served.
func (s *Server) Active() int { return s.tcp.Active() }

func (s *Server) sessionConfig() session.Config {
	return session.Config{
		IdleTimeout:  s.IdleTimeout,
		WriteTimeout: s.WriteTimeout,
		QueueBytes:   session.OrDefault(s.QueueBytes, defaultQueue),
		Shared:       s.Shared,
		StallTimeout: s.StallTimeout,
	}
}

// handshake completes a TLS connection's handshake within
// HandshakeTimeout, before a session starts: a session that ends at once
// (a refusal) expires its read deadline, which a handshake started by its
// first write would then fail on. It reports false if the handshake failed.
func (s *Server) handshake(nc net.Conn) bool {
	tc, ok := nc.(*tls.Conn)
	if !ok {
		return true
	}
	tc.SetDeadline(time.Now().Add(session.OrDefault(s.HandshakeTimeout, 30*time.Second)))
	if err := tc.Handshake(); err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) {
			// A client certificate the client CA did not sign: audited.
			subject := ""
			if len(cve.UnverifiedCertificates) > 0 {
				subject = cve.UnverifiedCertificates[0].Subject.String()
			}
			s.log().Warn("access refused", "listener", "pmx", "call", "TLS handshake", "principal", "", "remote", nc.RemoteAddr().String(),
				"subject", subject, "reason", "the client certificate does not verify against the client CA: "+cve.Err.Error())
			return false
		}
		s.log().Info("TLS handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		return false
	}
	tc.SetDeadline(time.Time{})
	return true
}

func (s *Server) serveConn(nc net.Conn) {
	if !s.handshake(nc) {
		return
	}
	ctx := context.Background()
	if s.Authenticate != nil {
		var state *tls.ConnectionState
		if tc, ok := nc.(*tls.Conn); ok {
			cs := tc.ConnectionState()
			state = &cs
		}
		p, err := s.Authenticate(state)
		if err != nil {
			s.log().Warn("access refused", "listener", "pmx", "call", "connect", "principal", "", "remote", nc.RemoteAddr().String(), "reason", err.Error())
			if s.Metrics != nil {
				s.Metrics.errors.Inc()
			}
			s.fail(nc, pmxproto.ErrorGeneric, "chunkbridge: access refused: "+err.Error())
			return
		}
		ctx = auth.NewContext(ctx, p)
		var stop func()
		ctx, stop = s.Credentials.Follow(ctx, p, func() (auth.Principal, error) { return s.Authenticate(state) })
		defer stop()
	}
	sess := session.New(ctx, nc, s.sessionConfig())
	c := &conn{
		srv: s, sess: sess, log: s.log().With("remote", nc.RemoteAddr().String()),
		requests:  session.NewBudget(session.OrDefault(s.RequestBytes, defaultRequests)),
		downloads: session.NewBudget(int64(session.OrDefault(s.MaxDownloads, defaultDownloads))),
		dlQueue:   make(chan *download),
		dlShare:   session.NewBudget(session.OrDefault(s.DownloadBytes, defaultDLBytes)),
		unacked:   map[uint64]bool{},
		streams:   map[uint8]*fileStream{},
		created:   map[string]bool{},
	}
	c.cond = sync.NewCond(&c.mu)
	// Waiters on uploads and lanes must wake when the connection ends:
	// the acknowledgements they wait for will never come.
	stop := context.AfterFunc(sess.Context(), func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer stop()
	if s.Metrics != nil {
		s.Metrics.connections.Inc()
	}
	err := sess.Run(c.readLoop)
	c.closeUploads()
	var idle *session.IdleError
	switch {
	case err == nil, errors.Is(err, context.Canceled):
	case errors.As(err, &idle):
		c.log.Info("connection idle; closed", "err", err)
	default:
		c.log.Warn("connection closed", "err", err)
	}
}

// refuse answers a connection beyond MaxConns with Error(Busy) in place of
// Hello, then closes it.
func (s *Server) refuse(nc net.Conn) {
	if !s.handshake(nc) {
		return
	}
	s.fail(nc, pmxproto.ErrorBusy, "chunkbridge: "+tcpserver.ErrTooManyConnections.Error())
}

// fail answers a connection with Error(code, reason) in place of Hello,
// then closes it: a client reads why, not a reset.
func (s *Server) fail(nc net.Conn, code pmxproto.ErrorID, reason string) {
	sess := session.New(context.Background(), nc, session.Config{WriteTimeout: 5 * time.Second, DrainTimeout: time.Second, IdleTimeout: 5 * time.Second})
	sess.Fail(errors.New(reason), (&pmxproto.Error{ID: 0, Code: code, Reason: reason}).Encode(nil))
	sess.Run(func(context.Context) error { return nil })
}
