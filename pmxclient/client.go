// The client speaks the protocol over any net.Conn (TCP or TLS). Requests
// are transactions with 8-bit ids; a Client multiplexes up to 256 of them on
// one connection, reuses an id once its final reply has arrived, and blocks
// new requests while all ids are in flight. One goroutine reads and
// dispatches replies; writes are serialised so packets never interleave.

package pmxclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// Digest is a chunk id: SHA-256 of the uncompressed chunk data. A [32]byte
// value, such as sha256.Sum256's result, can be used where a Digest is
// expected.
type Digest = pmxproto.Digest

// numIDs is the number of transaction ids: the header's id is a u8.
const numIDs = 256

// Client is a PMXBCKUP connection. Its methods are safe for concurrent use.
type Client struct {
	conn net.Conn
	addr string // for error messages
	// r is read by the reader goroutine only; Download releases consumed
	// chunk buffers to it (Release is safe from any goroutine).
	r *pmxproto.Reader

	wmu sync.Mutex // serialises writes; held while a packet is written
	w   *pmxproto.Writer

	ids chan uint8 // free ids; receiving allocates, sending frees

	mu      sync.Mutex
	pending [numIDs]handler // what waits for each id's replies; nil if free
	err     error           // why the connection ended; set once
	closed  bool            // the reader has exited; no new handlers

	done    chan struct{} // closed when the reader has exited
	uploads *Uploads      // the group behind Client.Upload and Client.Wait
}

// disposition says what happens to an id after a reply was delivered.
type disposition int

const (
	keep    disposition = iota // more replies will come for this id
	release                    // that was the final reply: the id is free
	// retire: the final reply can no longer be told apart from replies
	// that may still come, so the id is never reused on this connection
	// and later packets for it are dropped.
	retire
)

// handler receives the replies for one id. While registered, both methods
// run on the reader goroutine only, so a handler needs no lock for its own
// state, and neither may block.
type handler interface {
	// deliver takes one reply. An error means the server broke the
	// protocol (e.g. a reply type the request cannot have); the
	// connection is then closed.
	deliver(p pmxproto.Packet) (disposition, error)
	// fail reports that the connection ended before the final reply.
	fail(err error)
}

// ErrClosed is returned for requests on a Client after Close.
var ErrClosed = errors.New("pmx: client closed")

// Dial connects to a PMXBCKUP server at addr ("host:port"), over TLS when
// tlsConfig is not nil, and waits for the server's Hello. ctx bounds the
// connection set-up only; give it a deadline, since a server that accepts
// but never says Hello would otherwise keep Dial waiting.
func Dial(ctx context.Context, addr string, tlsConfig *tls.Config) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pmx: connecting to %s: %w", addr, err)
	}
	if tlsConfig != nil {
		cfg := tlsConfig.Clone()
		if cfg.ServerName == "" {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			if r := tlsRefused(addr, err); r != nil {
				return nil, r
			}
			return nil, fmt.Errorf("pmx: TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient starts a client on an established connection: it reads the
// server's Hello, checks its magic and version, and starts the reader. On
// error the caller still owns conn. ctx bounds the wait for Hello.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	addr := "server"
	if ra := conn.RemoteAddr(); ra != nil {
		addr = ra.String()
	}
	r := pmxproto.NewReader(conn)
	if err := readHello(ctx, conn, r, addr); err != nil {
		return nil, err
	}
	c := &Client{
		conn: conn,
		addr: addr,
		r:    r,
		w:    pmxproto.NewWriter(conn),
		ids:  make(chan uint8, numIDs),
		done: make(chan struct{}),
	}
	for i := range numIDs {
		c.ids <- uint8(i)
	}
	c.uploads = c.NewUploads()
	go c.readLoop(r)
	return c, nil
}

func readHello(ctx context.Context, conn net.Conn, r *pmxproto.Reader, addr string) error {
	// ctx's end, deadline included, interrupts the read.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	p, err := r.ReadPacket()
	if !stop() || ctx.Err() != nil {
		return fmt.Errorf("pmx: waiting for the Hello of %s: %w", addr, context.Cause(ctx))
	}
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		if r := tlsRefused(addr, err); r != nil {
			return r
		}
		return fmt.Errorf("pmx: reading the Hello of %s (is it a PMXBCKUP server?): %w", addr, err)
	}
	if e, ok := p.(*pmxproto.Error); ok {
		// The server refused the connection (e.g. Busy: too many
		// connections); its reason says why.
		return serverError("the connection to "+addr, e)
	}
	h, ok := p.(*pmxproto.Hello)
	if !ok {
		return fmt.Errorf("pmx: %s sent %s (id %d) before Hello; is it a PMXBCKUP server?", addr, p.PacketType(), p.PacketID())
	}
	if h.Version != pmxproto.Version {
		return fmt.Errorf("pmx: %s speaks PMXBCKUP version %d; this client speaks version %d", addr, h.Version, pmxproto.Version)
	}
	if h.ID != 0 {
		return fmt.Errorf("pmx: %s sent Hello with id %d; want 0", addr, h.ID)
	}
	return nil
}

// Close closes the connection. Requests in flight fail with ErrClosed; a
// backup file not finished is discarded by the server.
func (c *Client) Close() error {
	c.fatal(ErrClosed)
	<-c.done
	return nil
}

// Err returns why the connection ended, or nil while it is usable.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Done is closed when the connection has ended; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// fatal ends the connection with err, unless it already ended. The reader
// goroutine then fails every pending request.
func (c *Client) fatal(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.conn.Close()
}

func (c *Client) readLoop(r *pmxproto.Reader) {
	for {
		p, err := r.ReadPacket()
		if err != nil {
			c.fatal(fmt.Errorf("pmx: connection to %s: %w", c.addr, err))
			break
		}
		if err := c.dispatch(p); err != nil {
			c.fatal(err)
			break
		}
	}
	c.mu.Lock()
	err := c.err
	c.closed = true
	hs := c.pending
	c.pending = [numIDs]handler{}
	c.mu.Unlock()
	for _, h := range hs {
		if h != nil {
			h.fail(err)
		}
	}
	close(c.done)
}

func (c *Client) dispatch(p pmxproto.Packet) error {
	id := p.PacketID()
	c.mu.Lock()
	h := c.pending[id]
	c.mu.Unlock()
	if h == nil {
		return fmt.Errorf("pmx: %s sent %s with id %d, but no request with that id is in flight", c.addr, p.PacketType(), id)
	}
	d, err := h.deliver(p)
	if err != nil {
		return fmt.Errorf("pmx: %s broke the protocol: %w", c.addr, err)
	}
	switch d {
	case release:
		c.mu.Lock()
		c.pending[id] = nil
		c.mu.Unlock()
		c.ids <- id // never blocks: the channel holds every id
	case retire:
		c.mu.Lock()
		c.pending[id] = sink{}
		c.mu.Unlock()
	}
	return nil
}

// sink takes the place of a retired id's handler and drops what comes.
type sink struct{}

func (sink) deliver(pmxproto.Packet) (disposition, error) { return keep, nil }
func (sink) fail(error)                                   {}

// start allocates an id, blocking while all are in flight, and registers h
// for its replies.
func (c *Client) start(ctx context.Context, h handler) (uint8, error) {
	var id uint8
	select {
	case id = <-c.ids:
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	case <-c.done:
		return 0, c.Err()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.ids <- id
		return 0, c.err
	}
	c.pending[id] = h
	return id, nil
}

// send writes p, and flushes unless more packets follow at once (flush
// false), in which case a later send or the buffer limit flushes it. A
// write that fails, or that ctx interrupts, ends the connection: part of a
// packet may have been written.
func (c *Client) send(ctx context.Context, p pmxproto.Packet, flush bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.Err(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("pmx: %w", err) // nothing written; the connection is fine
	}
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(interrupted)
	})
	err := c.w.WritePacket(p)
	if err == nil && flush {
		err = c.w.Flush()
	}
	if !stop() {
		<-interrupted
		if err == nil {
			// ctx ended only after the packet was written whole: the
			// connection is fine, and the next request must not find
			// it cut (another backup on the same Client, say).
			c.conn.SetWriteDeadline(time.Time{})
			return nil
		}
		c.fatal(fmt.Errorf("pmx: sending %s to %s: %w", p.PacketType(), c.addr, context.Cause(ctx)))
		return context.Cause(ctx)
	}
	if err != nil {
		err = fmt.Errorf("pmx: sending %s to %s: %w", p.PacketType(), c.addr, err)
		c.fatal(err)
		return err
	}
	return nil
}

// flush writes buffered packets.
func (c *Client) flush(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.Err(); err != nil {
		return err
	}
	if c.w.Buffered() == 0 {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetWriteDeadline(time.Unix(1, 0)) })
	err := c.w.Flush()
	if !stop() {
		c.fatal(fmt.Errorf("pmx: flushing to %s: %w", c.addr, context.Cause(ctx)))
		return context.Cause(ctx)
	}
	if err != nil {
		err = fmt.Errorf("pmx: flushing to %s: %w", c.addr, err)
		c.fatal(err)
		return err
	}
	return nil
}

// request checks the packet mk builds, allocates an id for h, sends the
// packet with that id, and flushes. h.fail is called exactly once if the
// request fails: here if it was never sent (h was then never visible to
// the reader), else by the reader when the connection ends.
func (c *Client) request(ctx context.Context, h handler, mk func(id uint8) pmxproto.Packet) (uint8, error) {
	if err := mk(0).Validate(); err != nil {
		err = fmt.Errorf("pmx: %w", err)
		h.fail(err)
		return 0, err
	}
	id, err := c.start(ctx, h)
	if err != nil {
		h.fail(err)
		return 0, err
	}
	if err := c.send(ctx, mk(id), true); err != nil {
		return 0, err // the connection has ended: the reader fails h
	}
	return id, nil
}

// wait waits for ch, ctx or the end of the connection.
func wait[T any](ctx context.Context, c *Client, ch <-chan T) (T, error) {
	var zero T
	select {
	case v := <-ch:
		return v, nil
	case <-ctx.Done():
		return zero, context.Cause(ctx)
	case <-c.done:
		// The handler was failed before done closed; its value may be
		// waiting.
		select {
		case v := <-ch:
			return v, nil
		default:
			return zero, c.Err()
		}
	}
}
