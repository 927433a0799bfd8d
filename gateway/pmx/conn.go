package pmx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

const (
	// entryFlush is how many index entries go to the catalog at once.
	entryFlush = 1024
	// digestsPerPart bounds one HashListPart (at most 524 287 fit).
	digestsPerPart = 65536
	// smallPacket is what a packet without a payload counts against the
	// request budget.
	smallPacket = 64
)

// testHookDownloadsFull, if set, runs when the read loop waits for a
// connection's downloads to drain.
var testHookDownloadsFull func()

// conn is one PMXBCKUP connection on a session.Session.
//
// Packets are read in order by one loop. Those of one id form a lane,
// handled in arrival order by a goroutine that exists while the lane has
// work: a request waits until the previous one on its id has queued its
// reply, and never blocks other ids. An UploadChunk on an idle lane is sent
// by the read loop itself, so the chunk service sees uploads in the order
// they were read.
type conn struct {
	srv  *Server
	sess *session.Session
	log  *slog.Logger
	// packets reads the client's packets; uploads hand their buffers back.
	packets *pmxproto.Reader
	// requests bounds the bytes of packets read and not yet handled;
	// downloads bounds the DownloadChunks waiting for the download worker.
	requests  *session.Budget
	downloads *session.Budget
	dlQueue   chan *download
	dlOnce    sync.Once
	// dlShare is the connection's share of chunk bytes downloaded and not
	// yet written to the client (Server.DownloadBytes); dlMax (under mu)
	// the largest chunk downloaded so far, 0 before the first.
	dlShare *session.Budget
	dlMax   int64

	// putMu serialises Puts, so that the chunk service sees uploads in
	// the order they were read, and guards uploader: one ordered upload
	// stream for the connection, opened at the first upload and replaced
	// when it fails.
	putMu    sync.Mutex
	uploader *client.Uploader

	mu       sync.Mutex
	cond     *sync.Cond      // an upload was answered; a lane's uploads ended
	nextSeq  uint64          // uploads read so far; the next one's number
	unacked  map[uint64]bool // uploads read and not yet answered
	lowSeq   uint64          // every upload below it is answered
	lanes    [256]lane
	streams  map[uint8]*fileStream // open backup files by stream id
	created  map[string]bool       // snapshots this connection created
	hashList bool                  // a GetHashList is being answered
	// audited: the refusals already logged, one line per kind of call
	// per connection (a client refused every upload would flood the log).
	audited map[string]bool
}

// lane is the work of one packet id.
type lane struct {
	queue   []request
	running bool // a goroutine works the queue
	uploads int  // uploads sent on this id and not yet answered
}

// request is a packet read and not yet handled.
type request struct {
	p pmxproto.Packet
	// seq numbers an upload; barrier is the number of uploads read before
	// any other packet: entries it carries may reference them.
	seq, barrier uint64
	size         int64 // held in the request budget
	// busy refuses a GetHashList: another was read first and is not done.
	busy bool
}

// fileStream is one backup file being written through the catalog. Only
// its lane's goroutine touches pending.
type fileStream struct {
	id      uint8
	path    string
	fixed   bool
	stream  *client.SnapshotWriter
	pending []client.SnapshotEntry
	done    chan struct{} // closed once the file's final reply is queued
}

func (c *conn) send(ctx context.Context, p pmxproto.Packet) error {
	return c.sess.Send(ctx, p.Encode(nil))
}

// sendError answers id with an Error whose reason is err's message
// (DESIGN §7.4).
func (c *conn) sendError(ctx context.Context, id uint8, code pmxproto.ErrorID, err error) {
	c.log.Info("request refused", "id", id, "err", err)
	if c.srv.Metrics != nil {
		c.srv.Metrics.errors.Inc()
	}
	c.send(ctx, &pmxproto.Error{ID: id, Code: code, Reason: err.Error()})
}

// allowed checks that the connection's principal may do a (auth.Check).
// The caller answers a refusal with its reason; it is audited here, one
// "access refused" line per kind of call and connection.
func (c *conn) allowed(ctx context.Context, a auth.Action, what, call string) error {
	err := auth.Check(ctx, a, what)
	if err == nil {
		return nil
	}
	c.mu.Lock()
	first := !c.audited[call]
	if c.audited == nil {
		c.audited = map[string]bool{}
	}
	c.audited[call] = true
	c.mu.Unlock()
	if first {
		p := auth.FromContext(ctx)
		c.log.Warn("access refused", "listener", "pmx", "call", call, "principal", p.Name, "tenant", p.Tenant, "reason", err.Error())
	}
	return err
}

// errorCode is the ErrorId for a service's error: Busy for what a client
// should retry later (a conflicting operation, a budget used up, the
// service unreachable), Generic for the rest, a tenant's quota included
// (its message gives usage and limit).
func errorCode(err error) pmxproto.ErrorID {
	if errors.Is(apierr.FromStatus(err), apierr.ErrQuota) {
		return pmxproto.ErrorGeneric // not Busy: retrying does not help
	}
	switch apierr.Code(err) {
	case codes.Aborted, codes.ResourceExhausted, codes.Unavailable:
		return pmxproto.ErrorBusy
	}
	return pmxproto.ErrorGeneric
}

// serviceError answers id with a service's error, its code kept.
func (c *conn) serviceError(ctx context.Context, id uint8, err error) {
	c.sendError(ctx, id, errorCode(err), err)
}

// readLoop reads packets in order until the client leaves or the stream
// cannot be framed; the session's idle deadline covers every wait.
func (c *conn) readLoop(ctx context.Context) error {
	c.send(ctx, &pmxproto.Hello{ID: 0, Version: pmxproto.Version})
	r := pmxproto.NewReader(c.sess.Reader())
	// What only a server sends is skipped unread and answered at once: its
	// body is never allocated nor queued.
	r.SetRefused(pmxproto.TypeHello, pmxproto.TypeOk, pmxproto.TypeError, pmxproto.TypeHashListPart,
		pmxproto.TypeChunk, pmxproto.TypeBackupCreated)
	c.packets = r
	for {
		before := r.Offset()
		p, err := r.ReadPacket()
		if errors.Is(err, io.EOF) {
			// The client half-closed: what it sent before is still
			// answered (a BackupFinished among it commits its file).
			c.drainLanes(ctx)
			return nil
		}
		var be *pmxproto.BodyError
		if errors.As(err, &be) {
			// A bad body is answered and the connection goes on.
			c.sendError(ctx, be.ID, pmxproto.ErrorGeneric, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading a packet: %w", err)
		}
		c.srv.Metrics.packet(p)
		// A packet counts its length on the wire (a small one at least
		// smallPacket, its decoded form's overhead), whatever its type.
		req := request{p: p, size: max(r.Offset()-before, smallPacket)}
		if err := c.requests.Acquire(ctx, req.size); err != nil {
			return nil // the session ended
		}
		if _, ok := p.(*pmxproto.DownloadChunks); ok {
			// Downloads waiting for the worker are few: beyond them the
			// client waits, not the server's memory.
			if !c.downloads.TryAcquire(1) {
				if testHookDownloadsFull != nil {
					testHookDownloadsFull()
				}
				if err := c.downloads.Acquire(ctx, 1); err != nil {
					return nil
				}
			}
		}
		c.mu.Lock()
		if _, ok := p.(*pmxproto.UploadChunk); ok {
			req.seq = c.nextSeq
			c.unacked[req.seq] = true
			c.nextSeq++
		} else {
			req.barrier = c.nextSeq
		}
		if _, ok := p.(*pmxproto.GetHashList); ok {
			// Claimed in arrival order, not by whichever lane runs first.
			req.busy = c.hashList
			c.hashList = true
		}
		l := &c.lanes[p.PacketID()]
		if _, ok := p.(*pmxproto.UploadChunk); ok && !l.running && len(l.queue) == 0 {
			c.mu.Unlock()
			c.uploadChunk(ctx, req) // releases req.size once answered
			continue
		}
		l.queue = append(l.queue, req)
		if !l.running {
			l.running = true
			id := p.PacketID()
			c.sess.Go(func(ctx context.Context) error { c.work(ctx, id); return nil })
		}
		c.mu.Unlock()
	}
}

// work handles the packets of lane id in order until its queue is empty.
func (c *conn) work(ctx context.Context, id uint8) {
	l := &c.lanes[id]
	for {
		c.mu.Lock()
		if len(l.queue) == 0 || ctx.Err() != nil {
			l.running = false
			c.cond.Broadcast() // drainLanes may wait for this
			c.mu.Unlock()
			return
		}
		req := l.queue[0]
		l.queue = l.queue[1:]
		if _, up := req.p.(*pmxproto.UploadChunk); !up {
			// The previous transaction on this id answers first.
			for l.uploads > 0 && ctx.Err() == nil {
				c.cond.Wait()
			}
		}
		c.mu.Unlock()
		c.handle(ctx, req)
		if _, up := req.p.(*pmxproto.UploadChunk); !up {
			c.requests.Release(req.size) // an upload releases its own once answered
		}
	}
}

// drainLanes waits until every request read has been answered, or the
// session ends.
func (c *conn) drainLanes(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ctx.Err() == nil && c.lanesBusy() {
		c.cond.Wait()
	}
}

// lanesBusy reports whether a lane has work queued, running or an upload
// unanswered. Called with c.mu held.
func (c *conn) lanesBusy() bool {
	for i := range c.lanes {
		if l := &c.lanes[i]; l.running || len(l.queue) > 0 || l.uploads > 0 {
			return true
		}
	}
	return false
}

// laneIdle reports whether nothing more is queued on id: the client waits.
func (c *conn) laneIdle(id uint8) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lanes[id].queue) == 0
}

func (c *conn) handle(ctx context.Context, req request) {
	switch p := req.p.(type) {
	case *pmxproto.UploadChunk:
		c.uploadChunk(ctx, req)
	case *pmxproto.CreateBackup:
		c.createBackup(ctx, p)
	case *pmxproto.BackupDataFixed:
		c.backupData(ctx, p.ID, true, req.barrier, len(p.Entries), func(i int) client.SnapshotEntry {
			return client.SnapshotEntry{Slot: int64(p.Entries[i].Index), ID: client.ID(p.Entries[i].Digest)}
		})
	case *pmxproto.BackupDataDynamic:
		c.backupData(ctx, p.ID, false, req.barrier, len(p.Entries), func(i int) client.SnapshotEntry {
			return client.SnapshotEntry{Offset: int64(p.Entries[i].Offset), ID: client.ID(p.Entries[i].Digest)}
		})
	case *pmxproto.BackupFinished:
		c.backupFinished(ctx, p.ID, req.barrier)
	case *pmxproto.GetHashList:
		c.getHashList(ctx, p, req.busy)
	case *pmxproto.DownloadChunks:
		c.downloadChunks(ctx, p)
	default:
		// Server-to-client packets (Hello, Ok, Chunk, …) from a client.
		c.sendError(ctx, p.PacketID(), pmxproto.ErrorGeneric, fmt.Errorf("unexpected %s packet from a client", p.PacketType()))
	}
}

// answered marks upload seq answered and moves the barrier watermark.
// Called with c.mu held.
func (c *conn) answered(seq uint64) {
	delete(c.unacked, seq)
	for c.lowSeq < c.nextSeq && !c.unacked[c.lowSeq] {
		c.lowSeq++
	}
	c.cond.Broadcast()
}

// uploadChunk forwards a chunk to the chunk service; its Ok or Error is
// sent when the chunk service acknowledges it (DESIGN §7.3), in the order
// the uploads were read. The chunk's bytes stay in the request budget
// until then, so a connection holds at most RequestBytes of chunks read
// and not yet stored, whichever transport the client uses.
func (c *conn) uploadChunk(ctx context.Context, req request) {
	p := req.p.(*pmxproto.UploadChunk)
	// The reply is queued before the upload counts as answered, so that a
	// reply to a packet read after it comes after it.
	refuse := func(err error) {
		if ctx.Err() == nil {
			c.serviceError(ctx, p.ID, err)
		}
		c.mu.Lock()
		c.answered(req.seq)
		c.mu.Unlock()
		c.requests.Release(req.size)
	}
	if err := c.allowed(ctx, auth.Append, "chunks", "UploadChunk"); err != nil {
		refuse(err) // before the chunk service sees a byte of it
		return
	}
	if len(p.Data) > format.MaxChunk {
		// Stored, it could never be restored by every protocol: refused
		// here at once rather than by the chunk service later.
		refuse(fmt.Errorf("chunk %x: %d bytes exceed the largest chunk chunkbridge stores (%d): %w", p.Digest[:], len(p.Data), format.MaxChunk, apierr.ErrInvalid))
		return
	}
	up := client.Upload{
		ID: client.ID(p.Digest), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256,
		Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: p.Data,
	}
	done := func(r client.Result) {
		if r.Err == nil {
			c.send(ctx, &pmxproto.Ok{ID: p.ID})
		} else if ctx.Err() == nil {
			c.serviceError(ctx, p.ID, r.Err)
		}
		c.mu.Lock()
		c.answered(req.seq)
		c.mu.Unlock()
		c.requests.Release(req.size)
		c.laneUploadDone(p.ID)
		// The chunk service is done with the data: its buffer is filled
		// again by a later UploadChunk instead of a new one allocated.
		c.packets.Release(p)
	}
	c.putMu.Lock()
	defer c.putMu.Unlock()
	c.mu.Lock()
	c.lanes[p.ID].uploads++
	c.mu.Unlock()
	// A stream that failed earlier refuses every Put: it is replaced once,
	// after its last acknowledgement went out, so that the replies of one
	// id stay in order.
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if c.uploader == nil {
			c.uploader, err = c.srv.Chunks.NewUploader(c.sess.Context(), client.UploadOptions{
				Window: uploadWindow, WindowBytes: c.requests.Size(),
			})
			if err != nil {
				err = fmt.Errorf("chunk %x: %w", p.Digest[:], err)
				break
			}
		}
		if err = c.uploader.Put(ctx, up, done); err == nil || ctx.Err() != nil {
			break
		}
		c.uploader.Abort()
		c.uploader = nil
	}
	if err != nil {
		refuse(err)
		c.laneUploadDone(p.ID)
	}
}

// uploadWindow is how many chunks of a connection go to the chunk service
// unacknowledged; their bytes are bounded by the request budget.
const uploadWindow = 64

// closeUploads ends the connection's upload stream; chunks it has not
// acknowledged are answered with an error (nobody reads them now).
func (c *conn) closeUploads() {
	c.putMu.Lock()
	defer c.putMu.Unlock()
	if c.uploader != nil {
		c.uploader.Abort()
		c.uploader = nil
	}
}

// laneUploadDone lets the next request on id go once the upload's reply
// is queued.
func (c *conn) laneUploadDone(id uint8) {
	c.mu.Lock()
	c.lanes[id].uploads--
	c.cond.Broadcast()
	c.mu.Unlock()
}

// uploadBarrier waits until every chunk uploaded before the packet with
// this barrier is answered: PMXBCKUP promises that a chunk uploaded before
// the entry that references it is stored first, and the catalog checks
// entries against the store.
func (c *conn) uploadBarrier(ctx context.Context, barrier uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lowSeq < barrier && ctx.Err() == nil {
		c.cond.Wait()
	}
}

func snapshotKey(p *pmxproto.CreateBackup) string {
	return fmt.Sprintf("%s/%s/%d", p.BackupType, p.BackupID, p.Timestamp)
}

// createBackup opens a snapshot file in the catalog and answers
// BackupCreated with its path, or Error.
func (c *conn) createBackup(ctx context.Context, p *pmxproto.CreateBackup) {
	// The catalog checks too; refused here, the reason names the
	// principal and its role before a stream id is taken.
	if err := c.allowed(ctx, auth.Append, "snapshots", "CreateBackup"); err != nil {
		c.serviceError(ctx, p.ID, err)
		return
	}
	fs := &fileStream{id: p.ID, fixed: !p.Dynamic(), done: make(chan struct{})}
	c.mu.Lock()
	_, inUse := c.streams[p.ID]
	open := len(c.streams)
	// The original server remembers the snapshots a connection created, so
	// that several files can go into one snapshot under EXCL.
	exclusive := p.Exclusive() && !c.created[snapshotKey(p)]
	if !inUse && open < c.srv.maxOpenFiles() {
		c.streams[p.ID] = fs // reserved while the catalog answers
	}
	c.mu.Unlock()
	switch {
	case inUse:
		c.sendError(ctx, p.ID, pmxproto.ErrorGeneric, fmt.Errorf("stream id %d is already in use by an unfinished backup file", p.ID))
		return
	case open >= c.srv.maxOpenFiles():
		c.sendError(ctx, p.ID, pmxproto.ErrorGeneric, fmt.Errorf("too many open backup files on this connection (%d); finish one with BackupFinished first", open))
		return
	}
	stream, err := c.srv.Catalog.WriteSnapshotFile(ctx, client.SnapshotCreate{
		Type: p.BackupType.String(), BackupID: p.BackupID, Time: p.Time(), Name: p.Name,
		Fixed: !p.Dynamic(), ChunkSize: int64(p.ChunkSize), FileSize: int64(p.FileSize), Exclusive: exclusive,
	})
	if err != nil {
		c.closeStream(fs)
		c.serviceError(ctx, p.ID, err)
		return
	}
	fs.path, fs.stream = stream.Path(), stream
	c.mu.Lock()
	c.created[snapshotKey(p)] = true
	c.mu.Unlock()
	c.sess.Go(func(ctx context.Context) error { c.catalogReplies(ctx, fs); return nil })
	c.send(ctx, &pmxproto.BackupCreated{ID: p.ID, Path: fs.path})
}

// catalogReplies reports refused entries as Error on the stream id as
// they come, and the result of the commit as Ok or Error.
func (c *conn) catalogReplies(ctx context.Context, fs *fileStream) {
	defer close(fs.done)
	for {
		info, err := fs.stream.Next()
		var refused *client.RefusedEntry
		switch {
		case errors.As(err, &refused):
			c.serviceError(ctx, fs.id, err)
		case err != nil:
			c.closeStream(fs)
			if ctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled) {
				c.serviceError(ctx, fs.id, err)
			}
			return
		default:
			c.log.Info("snapshot file published", "path", fs.path, "chunks", info.ChunkCount)
			c.closeStream(fs)
			c.send(ctx, &pmxproto.Ok{ID: fs.id})
			return
		}
	}
}

// closeStream forgets a finished stream; its id may be reused (DESIGN §7.2).
func (c *conn) closeStream(fs *fileStream) {
	c.mu.Lock()
	if c.streams[fs.id] == fs {
		delete(c.streams, fs.id)
	}
	c.mu.Unlock()
}

func (c *conn) stream(id uint8) *fileStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// backupData sends the entries of an open file to the catalog in batches;
// no reply unless refused. Entries go out as soon as the client pauses,
// so that a refusal is answered when it happens, not at BackupFinished.
func (c *conn) backupData(ctx context.Context, id uint8, fixed bool, barrier uint64, n int, entry func(int) client.SnapshotEntry) {
	fs := c.stream(id)
	switch {
	case fs == nil || fs.stream == nil:
		c.sendError(ctx, id, pmxproto.ErrorGeneric, fmt.Errorf("no open backup file has stream id %d", id))
		return
	case fs.fixed != fixed:
		kind := map[bool]string{true: "fixed", false: "dynamic"}
		c.sendError(ctx, id, pmxproto.ErrorGeneric, fmt.Errorf("%s data for the %s file %s", kind[fixed], kind[fs.fixed], fs.path))
		return
	}
	for i := range n {
		fs.pending = append(fs.pending, entry(i))
		if len(fs.pending) == entryFlush {
			c.flushEntries(ctx, fs, barrier)
		}
	}
	if c.laneIdle(id) {
		c.flushEntries(ctx, fs, barrier)
	}
}

func (c *conn) flushEntries(ctx context.Context, fs *fileStream, barrier uint64) bool {
	if len(fs.pending) == 0 {
		return true
	}
	c.uploadBarrier(ctx, barrier)
	err := fs.stream.Entries(fs.pending...)
	fs.pending = fs.pending[:0] // Entries encoded them before it returned
	return err == nil           // a failed stream reports through catalogReplies
}

// backupFinished commits the file and waits for its Ok or Error, so that
// the next request on the id comes after it.
func (c *conn) backupFinished(ctx context.Context, id uint8, barrier uint64) {
	fs := c.stream(id)
	if fs == nil || fs.stream == nil {
		c.sendError(ctx, id, pmxproto.ErrorGeneric, fmt.Errorf("no open backup file has stream id %d", id))
		return
	}
	if c.flushEntries(ctx, fs, barrier) {
		fs.stream.Commit() // a failed stream reports through catalogReplies
	}
	select {
	case <-fs.done:
	case <-ctx.Done():
	}
}

// getHashList streams a snapshot file's digests (DESIGN §7.9); one at a
// time per connection.
func (c *conn) getHashList(ctx context.Context, p *pmxproto.GetHashList, busy bool) {
	if busy {
		c.sendError(ctx, p.ID, pmxproto.ErrorBusy, errors.New("a hash list is already being sent on this connection"))
		return
	}
	// The connection is free for another hash list before the last reply
	// is queued: a client that sends the next one on reading it must not
	// find this one still running.
	free := func() {
		c.mu.Lock()
		c.hashList = false
		c.mu.Unlock()
	}
	defer free()
	it := c.srv.Catalog.SnapshotDigests(ctx, strings.TrimPrefix(p.Name, "/"))
	defer it.Close()
	var part []pmxproto.Digest
	var err error
	for {
		var id client.ID
		id, err = it.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			break
		}
		part = append(part, pmxproto.Digest(id))
		if len(part) == digestsPerPart {
			if part, err = c.stored(ctx, part); err != nil {
				break
			}
			if c.send(ctx, &pmxproto.HashListPart{ID: p.ID, Digests: part}) != nil {
				return
			}
			part = nil
		}
	}
	if err == nil && len(part) > 0 {
		part, err = c.stored(ctx, part)
	}
	if err != nil {
		free()
		c.serviceError(ctx, p.ID, err)
		return
	}
	if len(part) > 0 {
		c.send(ctx, &pmxproto.HashListPart{ID: p.ID, Digests: part})
	}
	free()
	c.send(ctx, &pmxproto.HashListPart{ID: p.ID})
}

// stored keeps the digests of a hash list whose chunks the store holds. A
// client uploads no chunk its hash list names, so a chunk of the previous
// snapshot that is gone (moved to quarantine as corrupt) must be left out
// for the next backup to upload it again and heal the store; otherwise
// every backup of that file would fail at its commit. One existence check
// per part, mostly answered by the presence cache.
func (c *conn) stored(ctx context.Context, part []pmxproto.Digest) ([]pmxproto.Digest, error) {
	ids := make([]client.ID, len(part))
	for i, d := range part {
		ids[i] = client.ID(d)
	}
	missing, err := c.srv.Chunks.FindMissing(ctx, ids)
	if err != nil || len(missing) == 0 {
		return part, err
	}
	gone := make(map[client.ID]bool, len(missing))
	for _, id := range missing {
		gone[id] = true
	}
	return slices.DeleteFunc(part, func(d pmxproto.Digest) bool { return gone[client.ID(d)] }), nil
}

// download is a DownloadChunks for the download worker.
type download struct {
	p    *pmxproto.DownloadChunks
	done chan struct{}
}

// downloadChunks hands p to the connection's one download worker and
// waits, so the next request on the id comes after its replies.
func (c *conn) downloadChunks(ctx context.Context, p *pmxproto.DownloadChunks) {
	defer c.downloads.Release(1)
	c.dlOnce.Do(func() {
		c.sess.Go(func(ctx context.Context) error { c.downloadWorker(ctx); return nil })
	})
	d := &download{p: p, done: make(chan struct{})}
	select {
	case c.dlQueue <- d:
	case <-ctx.Done():
		return
	}
	select {
	case <-d.done:
	case <-ctx.Done():
	}
}

// downloadWorker answers downloads one at a time: the chunk bytes a
// connection holds are its download share (DownloadBytes, within the
// shared budget), however many downloads the client pipelines.
func (c *conn) downloadWorker(ctx context.Context) {
	for {
		select {
		case d := <-c.dlQueue:
			c.download(ctx, d.p)
			close(d.done)
		case <-ctx.Done():
			return
		}
	}
}

// download answers DownloadChunks (DESIGN §7.10): one Chunk per digest in
// request order, or Error for the first missing one and nothing after it.
//
// The digests are fetched in batches, each as many chunks as the
// connection's download share (Server.DownloadBytes) has room for at the
// largest chunk size the connection has seen. A batch's bytes are taken from
// that share and from the process's shared budget (Server.Shared) before
// it is asked for, and each chunk's bytes go back once its packet is
// written to the client: a client that does not read holds its share, not
// more, and all of them together hold at most the shared budget.
func (c *conn) download(ctx context.Context, p *pmxproto.DownloadChunks) {
	ids := make([]client.ID, len(p.Digests))
	for i, d := range p.Digests {
		ids[i] = client.ID(d)
	}
	var err error
	for start := 0; err == nil && start < len(ids); {
		est := c.dlEstimate()
		n := int(min(int64(len(ids)-start), max(c.dlShare.Size()/est, 1)))
		reserved := int64(n) * est
		if c.dlShare.Acquire(ctx, reserved) != nil {
			return // the session is over
		}
		if c.sess.Hold(ctx, reserved) != nil {
			c.dlShare.Release(reserved)
			return
		}
		var ok bool
		var done int
		done, ok, err = c.downloadBatch(ctx, p, start, ids[start:start+n], est)
		if !ok {
			return
		}
		start += done
	}
	if err != nil && ctx.Err() == nil {
		c.serviceError(ctx, p.ID, err)
	}
}

// dlEstimate is the bytes reserved per chunk asked for: the largest chunk
// the connection has seen (never its average, which a client can drive to
// 1 byte with one tiny chunk before huge ones); its whole share before the
// first chunk, so that the first batch is one chunk.
func (c *conn) dlEstimate() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	est := c.dlShare.Size()
	if c.dlMax > 0 {
		est = c.dlMax
	}
	return min(max(est, 1), c.dlShare.Size())
}

// downloadBatch answers the chunks ids, which are p's digests from start
// on; est bytes each are held. done is how many it answered: a chunk
// larger than its estimate overdraws by the difference and ends the batch,
// whose other estimates go back, so that a batch overdraws at most once
// and the rest is planned again with the new figures. ok is false once
// the session is over.
func (c *conn) downloadBatch(ctx context.Context, p *pmxproto.DownloadChunks, start int, ids []client.ID, est int64) (done int, ok bool, err error) {
	pending := len(ids) // estimates still held
	defer func() {
		c.dlShare.Release(int64(pending) * est)
		c.sess.Unhold(int64(pending) * est)
	}()
	dl := c.srv.Chunks.Download(ctx, ids, client.DownloadOptions{Raw: true})
	defer dl.Close()
	for i := range ids {
		ch, err := dl.Next()
		switch {
		case errors.Is(err, io.EOF):
			return i, true, fmt.Errorf("the chunk service ended the download after %d of %d chunks: %w", start+i, len(p.Digests), apierr.ErrInternal)
		case err != nil:
			return i, true, err
		case ch.Err != nil:
			return i, true, ch.Err
		case ch.ID != ids[i]:
			return i, true, fmt.Errorf("the chunk service answered chunk %s for %s: %w", ch.ID, ids[i], apierr.ErrInternal)
		case len(ch.Data) > pmxproto.MaxChunkData:
			return i, true, fmt.Errorf("chunk %s: %d bytes do not fit a Chunk packet: %w", ch.ID, len(ch.Data), apierr.ErrInvalid)
		}
		// Its estimate becomes its size, overdrawn by at most one chunk.
		size := int64(len(ch.Data))
		pending--
		if size > est {
			c.dlShare.Overdraw(size - est)
			c.sess.HoldNow(size - est)
		} else {
			c.dlShare.Release(est - size)
			c.sess.Unhold(est - size)
		}
		c.mu.Lock()
		c.dlMax = max(c.dlMax, size)
		c.mu.Unlock()
		chunk := &pmxproto.Chunk{ID: p.ID, Offset: uint64(start + i), Digest: p.Digests[start+i], Data: ch.Data}
		c.srv.Metrics.packet(chunk)
		// The packet is its head and the data as downloaded, never copied;
		// the writer gives the bytes back once written or dropped.
		written := func() {
			c.dlShare.Release(size)
			c.sess.Unhold(size)
		}
		if c.sess.SendBuffers(ctx, written, chunk.EncodeHead(nil), ch.Data) != nil {
			return i, false, nil
		}
		if size > est && i+1 < len(ids) {
			return i + 1, true, nil // planned again at the new largest size
		}
	}
	return len(ids), true, nil
}
