// Package pmxtest provides an in-memory PMXBCKUP peer for tests of clients:
// it follows DESIGN.md §7 closely enough to back up, list and restore
// through it, without the chunk service or storage, and has hooks for
// faults. It is not the gateway server (gateway/pmx's server is).
package pmxtest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// Peer is an in-memory PMXBCKUP server on a loopback port: it verifies
// uploads, checks file entries (slot range, contiguity, chunk stored),
// publishes files on BackupFinished, honours EXCL, answers hash lists
// (with "latest") and downloads. Its methods are safe for concurrent use.
type Peer struct {
	t  testing.TB
	ln net.Listener

	mu      sync.Mutex
	chunks  map[pmxproto.Digest][]byte
	files   map[string][]pmxproto.Digest // published path → digests
	latest  map[string]string            // "type/id/name.ext" → newest published path
	dirs    map[string]bool              // snapshot dirs created
	uploads int                          // UploadChunk packets received

	partSize int // digests per HashListPart
	busy     bool
	// corrupt, if set, may change a chunk's data (a copy) before a
	// DownloadChunks reply carries it.
	corrupt func(d pmxproto.Digest, data []byte) []byte
}

// NewPeer starts a Peer, stopped at the end of the test.
func NewPeer(t testing.TB) *Peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Peer{
		t: t, ln: ln, partSize: 3,
		chunks: map[pmxproto.Digest][]byte{}, files: map[string][]pmxproto.Digest{},
		latest: map[string]string{}, dirs: map[string]bool{},
	}
	var wg sync.WaitGroup
	var connMu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		connMu.Lock()
		for c := range conns {
			c.Close()
		}
		connMu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connMu.Lock()
			conns[c] = true
			connMu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				p.serve(c)
			}()
		}
	}()
	return p
}

// Addr returns the peer's "host:port".
func (p *Peer) Addr() string { return p.ln.Addr().String() }

// Dial returns a client of the peer, closed at the end of the test.
func (p *Peer) Dial(t testing.TB) *pmxclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pmxclient.Dial(ctx, p.ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Uploads returns the number of UploadChunk packets received so far.
func (p *Peer) Uploads() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.uploads
}

// File returns the digests of a published file.
func (p *Peer) File(path string) ([]pmxproto.Digest, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ds, ok := p.files[path]
	return ds, ok
}

// Files returns the paths of the published files, sorted.
func (p *Peer) Files() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var paths []string
	for path := range p.files {
		paths = append(paths, path)
	}
	slices.Sort(paths)
	return paths
}

// SetPartSize sets the number of digests per HashListPart (default 3).
func (p *Peer) SetPartSize(n int) {
	p.mu.Lock()
	p.partSize = n
	p.mu.Unlock()
}

// SetBusy makes every GetHashList fail with Error(Busy), or not.
func (p *Peer) SetBusy(busy bool) {
	p.mu.Lock()
	p.busy = busy
	p.mu.Unlock()
}

// SetCorrupt installs f, which may change the data of a chunk (a copy)
// before a DownloadChunks reply carries it; nil removes it.
func (p *Peer) SetCorrupt(f func(d pmxproto.Digest, data []byte) []byte) {
	p.mu.Lock()
	p.corrupt = f
	p.mu.Unlock()
}

// Put stores chunks and publishes a file of them under path.
func (p *Peer) Put(path string, chunks ...[]byte) []pmxproto.Digest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ds []pmxproto.Digest
	for _, c := range chunks {
		d := pmxproto.Digest(sha256.Sum256(c))
		p.chunks[d] = c
		ds = append(ds, d)
	}
	p.files[path] = ds
	return ds
}

type memStream struct {
	path    string
	key     string // type/id/name.ext, for "latest"
	fixed   bool
	slots   []bool
	digests []pmxproto.Digest
	end     uint64 // dynamic: the next offset
	refused bool
}

func (p *Peer) serve(conn net.Conn) {
	r, w := pmxproto.NewReader(conn), pmxproto.NewWriter(conn)
	w.WritePacket(&pmxproto.Hello{ID: 0, Version: pmxproto.Version})
	w.Flush()
	streams := map[uint8]*memStream{}
	for {
		pkt, err := r.ReadPacket()
		if err != nil {
			return
		}
		for _, reply := range p.handle(pkt, streams) {
			if err := w.WritePacket(reply); err != nil {
				p.t.Errorf("pmxtest: writing %s: %v", reply.PacketType(), err)
				return
			}
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func generic(id uint8, format string, args ...any) pmxproto.Packet {
	return &pmxproto.Error{ID: id, Code: pmxproto.ErrorGeneric, Reason: fmt.Sprintf(format, args...)}
}

func (p *Peer) handle(pkt pmxproto.Packet, streams map[uint8]*memStream) []pmxproto.Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := pkt.PacketID()
	switch q := pkt.(type) {
	case *pmxproto.UploadChunk:
		p.uploads++
		if got := pmxproto.Digest(sha256.Sum256(q.Data)); got != q.Digest {
			return []pmxproto.Packet{generic(id, "digest mismatch: data hashes to %s, not %s", got, q.Digest)}
		}
		p.chunks[q.Digest] = append([]byte(nil), q.Data...)
		return []pmxproto.Packet{&pmxproto.Ok{ID: id}}
	case *pmxproto.CreateBackup:
		if streams[id] != nil {
			p.t.Errorf("pmxtest: CreateBackup with id %d, which is an open stream", id)
		}
		path := q.Path()
		dir := path[:strings.LastIndexByte(path, '/')]
		if q.Exclusive() && p.dirs[dir] {
			return []pmxproto.Packet{generic(id, "snapshot %s exists", dir)}
		}
		p.dirs[dir] = true
		s := &memStream{path: path, key: fmt.Sprintf("%s/%s/%s", q.BackupType, q.BackupID, path[strings.LastIndexByte(path, '/')+1:]), fixed: !q.Dynamic()}
		if s.fixed {
			n := (q.FileSize + uint64(q.ChunkSize) - 1) / uint64(q.ChunkSize)
			s.slots, s.digests = make([]bool, n), make([]pmxproto.Digest, n)
		}
		streams[id] = s
		return []pmxproto.Packet{&pmxproto.BackupCreated{ID: id, Path: path}}
	case *pmxproto.BackupDataFixed:
		s := streams[id]
		for _, e := range q.Entries {
			switch {
			case s == nil || !s.fixed:
				return []pmxproto.Packet{generic(id, "no fixed stream %d", id)}
			case e.Index >= uint64(len(s.slots)):
				s.refused = true
				return []pmxproto.Packet{generic(id, "slot %d out of range", e.Index)}
			case p.chunks[e.Digest] == nil:
				s.refused = true
				return []pmxproto.Packet{generic(id, "slot %d: chunk %s not stored", e.Index, e.Digest)}
			}
			s.slots[e.Index], s.digests[e.Index] = true, e.Digest
		}
	case *pmxproto.BackupDataDynamic:
		s := streams[id]
		for _, e := range q.Entries {
			switch {
			case s == nil || s.fixed:
				return []pmxproto.Packet{generic(id, "no dynamic stream %d", id)}
			case e.Offset != s.end:
				s.refused = true
				return []pmxproto.Packet{generic(id, "offset %d, want %d", e.Offset, s.end)}
			case p.chunks[e.Digest] == nil:
				s.refused = true
				return []pmxproto.Packet{generic(id, "offset %d: chunk %s not stored", e.Offset, e.Digest)}
			}
			s.end += uint64(len(p.chunks[e.Digest]))
			s.digests = append(s.digests, e.Digest)
		}
	case *pmxproto.BackupFinished:
		s := streams[id]
		delete(streams, id)
		switch {
		case s == nil:
			return []pmxproto.Packet{generic(id, "no stream %d", id)}
		case s.refused:
			return []pmxproto.Packet{generic(id, "%s: an entry was refused", s.path)}
		}
		for i, ok := range s.slots {
			if !ok {
				return []pmxproto.Packet{generic(id, "%s: slot %d not filled", s.path, i)}
			}
		}
		p.files[s.path] = s.digests
		if old := p.latest[s.key]; s.path > old { // same key: RFC 3339 UTC sorts by time
			p.latest[s.key] = s.path
		}
		return []pmxproto.Packet{&pmxproto.Ok{ID: id}}
	case *pmxproto.GetHashList:
		if p.busy {
			return []pmxproto.Packet{&pmxproto.Error{ID: id, Code: pmxproto.ErrorBusy, Reason: "a hash list is streaming"}}
		}
		path := q.Name
		if parts := strings.Split(path, "/"); len(parts) == 4 && parts[2] == "latest" {
			path = p.latest[parts[0]+"/"+parts[1]+"/"+parts[3]]
		}
		ds, ok := p.files[path]
		if !ok {
			return []pmxproto.Packet{generic(id, "no snapshot file %s", q.Name)}
		}
		var out []pmxproto.Packet
		for len(ds) > 0 {
			n := min(p.partSize, len(ds))
			out = append(out, &pmxproto.HashListPart{ID: id, Digests: ds[:n]})
			ds = ds[n:]
		}
		return append(out, &pmxproto.HashListPart{ID: id})
	case *pmxproto.DownloadChunks:
		var out []pmxproto.Packet
		for i, d := range q.Digests {
			data := p.chunks[d]
			if data == nil {
				return append(out, generic(id, "chunk %s not found", d))
			}
			if p.corrupt != nil {
				data = p.corrupt(d, append([]byte(nil), data...))
			}
			out = append(out, &pmxproto.Chunk{ID: id, Offset: uint64(i), Digest: d, Data: data})
		}
		return out
	default:
		p.t.Errorf("pmxtest: unexpected %s", pkt.PacketType())
	}
	return nil
}
