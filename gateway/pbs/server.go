// Package pbs is the Proxmox Backup Server gateway (docs/pbs.md): a TLS
// listener where an HTTP/1.1 upgrade starts the backup or reader protocol
// over HTTP/2 (docs/pbs.md), and plain HTTPS requests
// reach the management routes a client needs. A datastore is the caller's
// tenant; snapshots are the catalog's.
package pbs

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/gateway/tcpserver"
	"github.com/chunkbridge/chunkbridge/internal/budget"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = tcpserver.ErrServerClosed

// The upgrade protocols.
const (
	BackupProtocol = "proxmox-backup-protocol-v1"
	ReaderProtocol = "proxmox-backup-reader-protocol-v1"
)

// Server serves PBS clients.
type Server struct {
	Chunks  *client.Chunks
	Catalog *client.Catalog
	Log     *slog.Logger
	// TLS is required: PBS clients speak nothing else.
	TLS *tls.Config
	// Credentials authenticates callers: an API token user@realm!tokenname
	// with its secret is the principal of that name whose token is the
	// secret, and a ticket names a principal. A session ends as soon as a
	// change of the file revokes or changes its principal
	// (auth.Registry.Follow). Nil: every caller is auth.Anonymous.
	Credentials *auth.Registry
	// Authenticate, if set, replaces the token check of Credentials (tests).
	Authenticate func(name, secret string) (auth.Principal, error)

	// MaxConns caps the connections served at once (default 1024).
	MaxConns int
	// IdleTimeout closes an HTTP/2 connection without streams (default
	// 10m); HandshakeTimeout bounds the TLS handshake, the upgrade
	// request and the reading of a management request (default 30s).
	IdleTimeout, HandshakeTimeout time.Duration
	// UploadBytes bounds the chunk and blob bodies a connection holds at
	// once, read and not yet stored (default 64 MiB): HTTP/2 windows let a
	// client send 32 MiB per stream, this caps the sum over its streams.
	UploadBytes int64
	// MaxEntries bounds the chunk entries a backup session holds in its
	// open indexes together (default 16 Mi, 64 TiB at 4 MiB chunks, about
	// 700 MiB): without it 16 open writers could hold 16 Mi entries each.
	MaxEntries int
	// BodyTimeout bounds the reading of one backup or reader request's body
	// (default 2 minutes: a 16 MiB chunk at 140 KB/s).
	BodyTimeout time.Duration
	// DownloadBytes bounds the chunk bytes a reader connection holds for
	// its client, fetched and not yet written (default 64 MiB): each chunk
	// request takes the largest chunk's size before the fetch and gives
	// back the difference once its size is known.
	DownloadBytes int64
	// MaxOpenWriters bounds a backup session's open index writers
	// (default 16); MaxChunks the digests one session may know (uploaded,
	// from its previous snapshot, or registered by downloads; default 4 Mi,
	// about 200 MiB of map).
	MaxOpenWriters, MaxChunks int
	// FileMemory bounds the whole files all sessions together hold in
	// memory at once (default 256 MiB): previous indexes and blobs read
	// for a client with their conversions and chunk maps, blobs uploaded,
	// manifests kept until finish. A request waits until its share is
	// free; a file whose share is larger than the budget waits for all
	// of it.
	FileMemory int64
	// Stats counts the store for the datastore status (the AdminService's
	// GetStats, called with the gateway's own admin credential); its
	// answer is reused for StatusTTL (default 1 minute). Nil: the status
	// answers 503.
	Stats     func(ctx context.Context) (*chunkbridgev1.GetStatsResponse, error)
	StatusTTL time.Duration

	// TicketKey signs tickets and their CSRF tokens (at least
	// MinTicketKey bytes): gateways given one key accept each other's
	// tickets, before and after a restart. Nil: a key made at start, so a
	// ticket works only at the process that issued it.
	TicketKey []byte

	fileMemOnce sync.Once
	fileMem     *budget.Budget

	keyOnce sync.Once
	key     []byte

	statsMu    sync.Mutex
	stats      *chunkbridgev1.GetStatsResponse
	statsAt    time.Time
	statsCount *statsCount // the count under way, if any

	once sync.Once
	tcp  tcpserver.Server
	mgmt *http.Server
	mln  *connListener
}

const (
	defaultMaxConns    = 1024
	defaultUploadBytes = 64 << 20
	defaultDLBytes     = 64 << 20
	defaultWriters     = 16
	defaultMaxChunks   = 4 << 20
	// PBS's HTTP/2 sizes.
	windowSize = 32 << 20
	frameSize  = 4 << 20
)

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) init() {
	s.once.Do(func() {
		s.ticketKey() // logs now when tickets are per process
		s.tcp.Handle = s.serveConn
		s.tcp.MaxConns = session.OrDefault(s.MaxConns, defaultMaxConns)
		s.tcp.Log = s.Log
		s.tcp.Wrap = func(c net.Conn) net.Conn { return tls.Server(c, s.TLS) }
		s.mln = &connListener{conns: make(chan net.Conn), done: make(chan struct{})}
		s.mgmt = &http.Server{
			Handler:           s.managementHandler(),
			ReadHeaderTimeout: session.OrDefault(s.HandshakeTimeout, 30*time.Second),
			// A management request's body is at most a few MiB of
			// parameters: a client trickling it is dropped.
			ReadTimeout:    session.OrDefault(s.HandshakeTimeout, 30*time.Second),
			WriteTimeout:   5 * time.Minute,
			IdleTimeout:    time.Minute,
			MaxHeaderBytes: 64 << 10,
			ErrorLog:       slog.NewLogLogger(s.log().Handler(), slog.LevelDebug),
		}
		go s.mgmt.Serve(s.mln)
	})
}

// Serve accepts connections until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if s.TLS == nil {
		return errors.New("pbs gateway: TLS is required (PBS clients speak nothing else): give a certificate and key")
	}
	if n := len(s.TicketKey); n > 0 && n < MinTicketKey {
		return fmt.Errorf("pbs gateway: the ticket key has %d bytes, want at least %d random ones", n, MinTicketKey)
	}
	s.init()
	return s.tcp.Serve(ln)
}

// Shutdown stops accepting and waits for connections until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mgmt.Shutdown(ctx)
	return s.tcp.Shutdown(ctx)
}

// Fingerprint is the SHA-256 of a certificate's DER, as proxmox-backup-client's
// --fingerprint spells it (colon-separated lowercase hex).
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	h := hex.EncodeToString(sum[:])
	parts := make([]string, 0, len(sum))
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// audit logs one refused call.
func (s *Server) audit(p auth.Principal, remote, call string, err error) {
	s.log().Warn("access refused", "listener", "pbs", "call", call, "principal", p.Name, "tenant", p.Tenant, "remote", remote, "reason", err.Error())
}

// checkToken maps an API token onto its principal.
func (s *Server) checkToken(name, secret string) (auth.Principal, error) {
	if s.Authenticate != nil {
		return s.Authenticate(name, secret)
	}
	p, err := s.Credentials.Token(secret)
	if err == nil && p.Name != name {
		err = auth.ErrUnknownCredential // the secret is another principal's
	}
	if err != nil {
		return auth.Principal{}, fmt.Errorf("API token %s: %w", name, err)
	}
	return p, nil
}

// open reports whether no credentials are configured: everyone is
// auth.Anonymous.
func (s *Server) open() bool { return s.Authenticate == nil && s.Credentials == nil }

// authenticate reads a PBSAPIToken header (both spellings).
func (s *Server) authenticate(header string) (auth.Principal, error) {
	if s.open() {
		return auth.Anonymous, nil
	}
	rest, ok := strings.CutPrefix(header, "PBSAPIToken=")
	if !ok {
		rest, ok = strings.CutPrefix(header, "PBSAPIToken ")
	}
	if !ok {
		return auth.Principal{}, errors.New("no credential: send Authorization: PBSAPIToken=user@realm!tokenname:secret, or log in at /api2/json/access/ticket")
	}
	name, secret, ok := strings.Cut(rest, ":")
	if !ok || name == "" || secret == "" {
		return auth.Principal{}, errors.New("malformed API token: want user@realm!tokenname:secret")
	}
	return s.checkToken(name, secret)
}

// cleanPath maps //api2/json/x (proxmox-backup-client, Proxmox VE) and
// /api2/json/x (the Go client) to one spelling.
func cleanPath(p string) string { return "/" + strings.TrimLeft(p, "/") }

func (s *Server) serveConn(nc net.Conn) {
	remote := nc.RemoteAddr().String()
	tc := nc.(*tls.Conn)
	nc.SetDeadline(time.Now().Add(session.OrDefault(s.HandshakeTimeout, 30*time.Second)))
	if err := tc.Handshake(); err != nil {
		s.log().Info("TLS handshake failed", "remote", remote, "err", err)
		return
	}
	br := bufio.NewReaderSize(nc, 16<<10)
	// The Go client sends no Host header, which net/http's server refuses:
	// the first request's header is read here, and only non-upgrade
	// requests go on to the management server, the header as it came (a
	// Host added if it has none) and its body unread.
	head, err := peekHeader(br)
	if err != nil {
		s.log().Info("reading the first request", "remote", remote, "err", err)
		return
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if err != nil {
		s.log().Info("reading the first request", "remote", remote, "err", err)
		return
	}
	head = bytes.Clone(head)
	br.Discard(len(head))
	nc.SetDeadline(time.Time{})
	if req.Header.Get("Upgrade") == "" {
		if req.Host == "" {
			line, rest, _ := bytes.Cut(head, []byte("\n"))
			head = slices.Concat(line, []byte("\nHost: localhost\r\n"), rest) // the Go client sends none
		}
		c := &replayConn{Conn: nc, r: io.MultiReader(bytes.NewReader(head), br), closed: make(chan struct{})}
		select {
		case s.mln.conns <- c:
			<-c.closed
		case <-s.mln.done:
		}
		return
	}
	s.upgrade(nc, br, req, remote)
}

// peekHeader returns the bytes of the first request's header, through its
// empty line, leaving them in br: at most br's size, and never any of the
// body, which a client may make as long as it likes.
func peekHeader(br *bufio.Reader) ([]byte, error) {
	for n := 1; ; n = br.Buffered() + 1 {
		if n > br.Size() {
			return nil, fmt.Errorf("request header longer than %d bytes", br.Size())
		}
		buf, err := br.Peek(n)
		if err != nil {
			return nil, err
		}
		buf, _ = br.Peek(br.Buffered())
		// The header ends at its first empty line (net/http takes a
		// bare LF for a CRLF).
		if i := bytes.Index(buf, []byte("\n\r\n")); i >= 0 && !bytes.Contains(buf[:i+1], []byte("\n\n")) {
			return buf[:i+3], nil
		}
		if i := bytes.Index(buf, []byte("\n\n")); i >= 0 {
			return buf[:i+2], nil
		}
	}
}

// fail answers an upgrade request with a plain HTTP error.
func fail(nc net.Conn, status int, msg string) {
	nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(nc, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), len(msg), msg)
}

func (s *Server) upgrade(nc net.Conn, br *bufio.Reader, req *http.Request, remote string) {
	path := cleanPath(req.URL.Path)
	proto := req.Header.Get("Upgrade")
	var reader bool
	switch {
	case path == "/api2/json/backup" && proto == BackupProtocol:
	case path == "/api2/json/reader" && proto == ReaderProtocol:
		reader = true
	default:
		fail(nc, http.StatusBadRequest, fmt.Sprintf("unknown upgrade %q on %s: want %s on /api2/json/backup or %s on /api2/json/reader", proto, path, BackupProtocol, ReaderProtocol))
		return
	}
	call := "backup"
	if reader {
		call = "reader"
	}
	// An upgrade is a GET: as with PBS, a ticket needs no CSRF token.
	p, err := s.authenticateRequest(req, false)
	if err != nil {
		s.audit(auth.Principal{}, remote, call, err)
		fail(nc, http.StatusUnauthorized, "authentication failed: "+err.Error())
		return
	}
	ctx, cancel := context.WithCancel(auth.NewContext(context.Background(), p))
	defer cancel()
	if s.Credentials != nil {
		var stop func()
		ctx, stop = s.Credentials.Follow(ctx, p, func() (auth.Principal, error) { return s.authenticateRequest(req, false) })
		defer stop()
	}
	// The connection ends with its context (a revoked principal), and
	// every request with it.
	defer context.AfterFunc(ctx, func() { nc.Close() })()
	q := req.URL.Query()
	snap, status, err := s.snapshotParams(q, p)
	if err == nil {
		want := auth.Read
		if !reader {
			want = auth.Append
		}
		if err = auth.Check(ctx, want, "backups"); err != nil {
			status = http.StatusForbidden
		}
	}
	if err != nil {
		if status == http.StatusForbidden || status == http.StatusNotFound {
			s.audit(p, remote, call, err)
		}
		fail(nc, status, err.Error())
		return
	}
	var h http.Handler
	if reader {
		h, err = s.newReader(ctx, p, snap, remote)
	} else {
		h, err = s.newBackup(ctx, p, snap, remote)
	}
	if err != nil {
		fail(nc, statusOf(err), err.Error())
		return
	}
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(nc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: upgrade\r\n\r\n", proto); err != nil {
		return
	}
	nc.SetWriteDeadline(time.Time{})
	h2 := &http2.Server{
		MaxConcurrentStreams:         64,
		MaxReadFrameSize:             frameSize,
		MaxUploadBufferPerConnection: windowSize,
		MaxUploadBufferPerStream:     windowSize,
		IdleTimeout:                  session.OrDefault(s.IdleTimeout, 10*time.Minute),
		WriteByteTimeout:             time.Minute,
		// A peer that sends nothing for a minute is pinged, and dropped
		// if it does not answer: a vanished client frees its streams.
		ReadIdleTimeout: time.Minute,
		PingTimeout:     15 * time.Second,
	}
	h2.ServeConn(&bufferedConn{Conn: nc, r: br}, &http2.ServeConnOpts{
		Context: ctx,
		Handler: h,
	})
	if b, ok := h.(*backup); ok {
		b.end()
	}
}

// bufferedConn reads what the upgrade request's reader buffered first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// replayConn hands the management server a connection whose first
// request's header was read already: it is read again in front of the rest.
type replayConn struct {
	net.Conn
	r      io.Reader
	cOnce  sync.Once
	closed chan struct{}
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *replayConn) Close() error {
	err := c.Conn.Close()
	c.cOnce.Do(func() { close(c.closed) })
	return err
}

// connListener feeds the management server the connections serveConn
// passes on.
type connListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *connListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
