package pmx

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// ChunkClient and CatalogClient are the gRPC services the gateway uses.
type (
	ChunkClient   = chunkbridgev1.ChunkServiceClient
	CatalogClient = chunkbridgev1.CatalogServiceClient
)

const (
	// entryFlush is how many index entries are sent to the catalog at once.
	entryFlush = 1024
	// digestsPerPart bounds one HashListPart (at most 524 287 fit).
	digestsPerPart = 65536
)

// conn is one PMXBCKUP connection.
type conn struct {
	srv    *Server
	nc     net.Conn
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	out    chan []byte

	mu sync.Mutex
	// Uploads go through one UploadChunks stream; its acknowledgements come
	// in request order, so the packet ids wait in a FIFO.
	upload      chunkbridgev1.ChunkService_UploadChunksClient
	uploadIDs   []uint8
	uploadsSent int64
	uploadsDone int64
	acked       *sync.Cond
	hashList    bool                  // a GetHashList is being answered
	streams     map[uint8]*fileStream // open backup files by stream id
	created     map[string]bool       // snapshots this connection created
	fatal       error
}

// fileStream is one backup file being written through the catalog.
type fileStream struct {
	id      uint8
	path    string
	fixed   bool
	stream  chunkbridgev1.CatalogService_WriteSnapshotFileClient
	pending []*chunkbridgev1.WriteSnapshotFileRequest_Entry
	cancel  context.CancelFunc
	done    chan struct{} // closed when the catalog's replies have ended
}

// send queues an encoded packet; false once the connection is over.
func (c *conn) send(p pmxproto.Packet) bool {
	select {
	case c.out <- p.Encode(nil):
		return true
	case <-c.ctx.Done():
		return false
	}
}

// sendError answers id with an Error and a reason (DESIGN §7.4).
func (c *conn) sendError(id uint8, code pmxproto.ErrorID, err error) {
	c.log.Info("request refused", "id", id, "err", err)
	if c.srv.Metrics != nil {
		c.srv.Metrics.errors.Inc()
	}
	c.send(&pmxproto.Error{ID: id, Code: code, Reason: reason(err)})
}

func reason(err error) string {
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK {
		return s.Message()
	}
	return err.Error()
}

func (c *conn) writer(w *bufio.Writer) {
	for {
		select {
		case b := <-c.out:
			// A client that stops reading must not hold the connection:
			// a write that cannot finish ends it.
			c.nc.SetWriteDeadline(time.Now().Add(idleTimeout))
			if _, err := w.Write(b); err != nil {
				c.cancel()
				return
			}
			if len(c.out) == 0 && w.Flush() != nil {
				c.cancel()
				return
			}
		case <-c.ctx.Done():
			c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			for {
				select {
				case b := <-c.out:
					w.Write(b)
					continue
				default:
				}
				break
			}
			w.Flush()
			return
		}
	}
}

// run reads packets in order until the client leaves or the stream cannot
// be framed.
func (c *conn) run() error {
	c.send(&pmxproto.Hello{ID: 0, Version: pmxproto.Version})
	r := pmxproto.NewReader(c.nc)
	for {
		c.nc.SetReadDeadline(time.Now().Add(idleTimeout))
		p, err := r.ReadPacket()
		if errors.Is(err, io.EOF) {
			return nil
		}
		var be *pmxproto.BodyError
		if errors.As(err, &be) {
			// A bad body is answered and the connection goes on.
			c.sendError(be.ID, pmxproto.ErrorGeneric, err)
			continue
		}
		if err != nil {
			return err
		}
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
		c.srv.Metrics.packet(p)
		switch p := p.(type) {
		case *pmxproto.UploadChunk:
			c.uploadChunk(p)
		case *pmxproto.CreateBackup:
			c.createBackup(p)
		case *pmxproto.BackupDataFixed:
			entries := make([]*chunkbridgev1.WriteSnapshotFileRequest_Entry, len(p.Entries))
			for i, e := range p.Entries {
				entries[i] = &chunkbridgev1.WriteSnapshotFileRequest_Entry{Slot: int64(e.Index), Digest: hex.EncodeToString(e.Digest[:])}
			}
			c.backupData(p.ID, true, entries)
		case *pmxproto.BackupDataDynamic:
			entries := make([]*chunkbridgev1.WriteSnapshotFileRequest_Entry, len(p.Entries))
			for i, e := range p.Entries {
				entries[i] = &chunkbridgev1.WriteSnapshotFileRequest_Entry{Offset: int64(e.Offset), Digest: hex.EncodeToString(e.Digest[:])}
			}
			c.backupData(p.ID, false, entries)
		case *pmxproto.BackupFinished:
			c.backupFinished(p.ID)
		case *pmxproto.GetHashList:
			c.getHashList(p)
		case *pmxproto.DownloadChunks:
			go c.downloadChunks(p)
		default:
			// Server-to-client packets (Hello, Ok, Chunk, …) from a client.
			c.sendError(p.PacketID(), pmxproto.ErrorGeneric, fmt.Errorf("unexpected %s packet from a client", p.PacketType()))
		}
	}
}

// finish ends the connection: a framing error closes it at once (DESIGN
// §7.1); unfinished backup files are abandoned, so nothing is published.
func (c *conn) finish(err error) {
	if err != nil && !errors.Is(err, context.Canceled) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.log.Info("connection idle; closed")
		} else {
			c.log.Warn("connection closed", "err", err)
		}
	}
	c.mu.Lock()
	for _, fs := range c.streams {
		fs.cancel()
	}
	c.mu.Unlock()
	c.cancel()
	c.nc.Close()
}

// uploadChunk forwards a chunk to the chunk service; its Ok or Error is
// sent when the chunk service acknowledges it (DESIGN §7.3).
func (c *conn) uploadChunk(p *pmxproto.UploadChunk) {
	c.mu.Lock()
	if c.upload == nil {
		up, err := c.srv.Chunks.UploadChunks(c.ctx)
		if err != nil {
			c.mu.Unlock()
			c.sendError(p.ID, pmxproto.ErrorGeneric, fmt.Errorf("chunk service unavailable: %w", err))
			return
		}
		c.upload = up
		go c.acknowledge(up)
	}
	up := c.upload
	c.uploadIDs = append(c.uploadIDs, p.ID)
	c.uploadsSent++
	c.mu.Unlock()
	// Not under the lock: Send may wait for flow control, which needs the
	// acknowledger to make progress. Only this read loop sends.
	err := up.Send(&chunkbridgev1.UploadChunksRequest{
		Id: hex.EncodeToString(p.Digest[:]), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256,
		Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: p.Data,
	})
	if err != nil {
		c.mu.Lock()
		if c.upload == up {
			c.failUploads(fmt.Errorf("chunk service: %w", err))
		}
		c.mu.Unlock()
	}
}

// acknowledge turns the chunk service's acknowledgements into Ok or Error.
func (c *conn) acknowledge(up chunkbridgev1.ChunkService_UploadChunksClient) {
	for {
		ack, err := up.Recv()
		if err != nil {
			c.mu.Lock()
			if c.upload == up && c.ctx.Err() == nil {
				c.failUploads(fmt.Errorf("chunk service: %w", err))
			}
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		if c.upload != up || len(c.uploadIDs) == 0 {
			c.mu.Unlock()
			return
		}
		id := c.uploadIDs[0]
		c.uploadIDs = c.uploadIDs[1:]
		c.uploadsDone++
		c.acked.Broadcast()
		c.mu.Unlock()
		if ack.GetCode() == 0 {
			c.send(&pmxproto.Ok{ID: id})
		} else {
			c.sendError(id, pmxproto.ErrorGeneric, status.Error(codes.Code(ack.GetCode()), ack.GetMessage()))
		}
	}
}

// failUploads answers every upload in flight with Error and drops the
// stream, so the next upload opens a new one. Called with c.mu held.
func (c *conn) failUploads(err error) {
	for _, id := range c.uploadIDs {
		c.send(&pmxproto.Error{ID: id, Code: pmxproto.ErrorGeneric, Reason: reason(err)})
	}
	c.uploadsDone += int64(len(c.uploadIDs))
	c.uploadIDs = nil
	c.upload = nil
	c.acked.Broadcast()
}

// uploadBarrier waits until every chunk uploaded so far is acknowledged:
// PMXBCKUP promises that a chunk uploaded before the entry that references
// it is stored first, and the catalog checks entries against the store.
func (c *conn) uploadBarrier() {
	c.mu.Lock()
	defer c.mu.Unlock()
	target := c.uploadsSent
	for c.uploadsDone < target && c.ctx.Err() == nil {
		c.acked.Wait()
	}
}

func snapshotKey(p *pmxproto.CreateBackup) string {
	return fmt.Sprintf("%s/%s/%d", p.BackupType, p.BackupID, p.Timestamp)
}

// createBackup opens a snapshot file in the catalog and answers
// BackupCreated with its path, or Error.
func (c *conn) createBackup(p *pmxproto.CreateBackup) {
	c.mu.Lock()
	_, inUse := c.streams[p.ID]
	// The original server remembers the snapshots a connection created, so
	// that several files can go into one snapshot under EXCL.
	exclusive := p.Exclusive() && !c.created[snapshotKey(p)]
	c.mu.Unlock()
	if inUse {
		c.sendError(p.ID, pmxproto.ErrorGeneric, fmt.Errorf("stream id %d is already in use by an unfinished backup file", p.ID))
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	stream, err := c.srv.Catalog.WriteSnapshotFile(ctx)
	if err == nil {
		err = stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{
			Create: &chunkbridgev1.WriteSnapshotFileRequest_Create{
				Type: p.BackupType.String(), BackupId: p.BackupID, Time: timestamppb.New(p.Time()), Name: p.Name,
				Fixed: !p.Dynamic(), ChunkSize: int64(p.ChunkSize), FileSize: int64(p.FileSize), Exclusive: exclusive,
			},
		}})
	}
	var resp *chunkbridgev1.WriteSnapshotFileResponse
	if err == nil {
		resp, err = stream.Recv()
	}
	if err != nil {
		cancel()
		c.sendError(p.ID, pmxproto.ErrorGeneric, err)
		return
	}
	fs := &fileStream{id: p.ID, path: resp.GetCreated().GetPath(), fixed: !p.Dynamic(), stream: stream, cancel: cancel, done: make(chan struct{})}
	c.mu.Lock()
	c.streams[p.ID] = fs
	c.created[snapshotKey(p)] = true
	c.mu.Unlock()
	go c.catalogReplies(fs)
	c.send(&pmxproto.BackupCreated{ID: p.ID, Path: fs.path})
}

// catalogReplies reports refused entries as Error on the stream id, and
// the result of the commit as Ok or Error.
func (c *conn) catalogReplies(fs *fileStream) {
	defer close(fs.done)
	for {
		resp, err := fs.stream.Recv()
		if err != nil {
			if c.ctx.Err() == nil && !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
				c.sendError(fs.id, pmxproto.ErrorGeneric, err)
			}
			c.closeStream(fs)
			return
		}
		switch step := resp.GetStep().(type) {
		case *chunkbridgev1.WriteSnapshotFileResponse_Refused:
			c.sendError(fs.id, pmxproto.ErrorGeneric, errors.New(step.Refused.GetMessage()))
		case *chunkbridgev1.WriteSnapshotFileResponse_Committed_:
			c.log.Info("snapshot file published", "path", fs.path, "chunks", step.Committed.GetFile().GetChunkCount())
			c.closeStream(fs)
			c.send(&pmxproto.Ok{ID: fs.id})
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
	fs.cancel()
}

func (c *conn) stream(id uint8) *fileStream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// backupData queues entries of an open file; no reply unless refused.
func (c *conn) backupData(id uint8, fixed bool, entries []*chunkbridgev1.WriteSnapshotFileRequest_Entry) {
	fs := c.stream(id)
	switch {
	case fs == nil:
		c.sendError(id, pmxproto.ErrorGeneric, fmt.Errorf("no open backup file has stream id %d", id))
		return
	case fs.fixed != fixed:
		kind := map[bool]string{true: "fixed", false: "dynamic"}
		c.sendError(id, pmxproto.ErrorGeneric, fmt.Errorf("%s data for the %s file %s", kind[fixed], kind[fs.fixed], fs.path))
		return
	}
	fs.pending = append(fs.pending, entries...)
	if len(fs.pending) >= entryFlush {
		c.flushEntries(fs)
	}
}

func (c *conn) flushEntries(fs *fileStream) bool {
	if len(fs.pending) == 0 {
		return true
	}
	c.uploadBarrier()
	err := fs.stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Entries_{
		Entries: &chunkbridgev1.WriteSnapshotFileRequest_Entries{Entries: fs.pending},
	}})
	fs.pending = nil
	return err == nil // a failed stream reports through catalogReplies
}

// backupFinished commits the file; catalogReplies answers Ok or Error.
func (c *conn) backupFinished(id uint8) {
	fs := c.stream(id)
	if fs == nil {
		c.sendError(id, pmxproto.ErrorGeneric, fmt.Errorf("no open backup file has stream id %d", id))
		return
	}
	if c.flushEntries(fs) {
		fs.stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Commit_{Commit: &chunkbridgev1.WriteSnapshotFileRequest_Commit{}}})
	}
	// Keep reading packets while the catalog publishes; the next packets
	// on this id wait for the id to be free.
}

// getHashList streams a snapshot file's digests (DESIGN §7.9); one at a
// time per connection.
func (c *conn) getHashList(p *pmxproto.GetHashList) {
	c.mu.Lock()
	busy := c.hashList
	c.hashList = true
	c.mu.Unlock()
	if busy {
		c.sendError(p.ID, pmxproto.ErrorBusy, errors.New("a hash list is already being sent on this connection"))
		return
	}
	go func() {
		defer func() {
			c.mu.Lock()
			c.hashList = false
			c.mu.Unlock()
		}()
		stream, err := c.srv.Catalog.ReadSnapshotDigests(c.ctx, &chunkbridgev1.ReadSnapshotDigestsRequest{Path: strings.TrimPrefix(p.Name, "/")})
		var part []pmxproto.Digest
		for err == nil {
			var resp *chunkbridgev1.ReadSnapshotDigestsResponse
			resp, err = stream.Recv()
			if errors.Is(err, io.EOF) {
				err = nil
				break
			}
			for _, h := range resp.GetDigests() {
				var d pmxproto.Digest
				hex.Decode(d[:], []byte(h))
				part = append(part, d)
				if len(part) == digestsPerPart {
					c.send(&pmxproto.HashListPart{ID: p.ID, Digests: part})
					part = nil
				}
			}
		}
		if err != nil {
			c.sendError(p.ID, pmxproto.ErrorGeneric, err)
			return
		}
		if len(part) > 0 {
			c.send(&pmxproto.HashListPart{ID: p.ID, Digests: part})
		}
		c.send(&pmxproto.HashListPart{ID: p.ID})
	}()
}

// downloadChunks answers DownloadChunks (DESIGN §7.10): one Chunk per
// digest in request order, or Error for the first missing one and nothing
// after it.
func (c *conn) downloadChunks(p *pmxproto.DownloadChunks) {
	req := &chunkbridgev1.DownloadChunksRequest{Ids: make([]string, len(p.Digests)), Encoding: chunkbridgev1.Encoding_ENCODING_RAW}
	for i, d := range p.Digests {
		req.Ids[i] = hex.EncodeToString(d[:])
	}
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	stream, err := c.srv.Chunks.DownloadChunks(ctx, req)
	for i := 0; err == nil && i < len(p.Digests); i++ {
		var resp *chunkbridgev1.DownloadChunksResponse
		resp, err = stream.Recv()
		if err == nil && resp.GetCode() != 0 {
			err = status.Error(codes.Code(resp.GetCode()), resp.GetMessage())
		}
		if err == nil && len(resp.GetData()) > pmxproto.MaxChunkData {
			err = fmt.Errorf("chunk %s: %d bytes do not fit a Chunk packet", resp.GetId(), len(resp.GetData()))
		}
		if err == nil {
			chunk := &pmxproto.Chunk{ID: p.ID, Offset: uint64(i), Digest: p.Digests[i], Data: resp.GetData()}
			c.srv.Metrics.packet(chunk)
			if !c.send(chunk) {
				return
			}
		}
	}
	if err != nil {
		c.sendError(p.ID, pmxproto.ErrorGeneric, err)
	}
}
