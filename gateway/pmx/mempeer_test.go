package pmx_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/gateway/pmx/wire"
)

// memPeer is an in-memory PMXBCKUP server with DESIGN §7's semantics, to
// test the client against: it verifies uploads, checks entries, publishes
// files on BackupFinished, answers hash lists (with "latest") and
// downloads. Fault hooks let tests corrupt its answers.
type memPeer struct {
	t  testing.TB
	ln net.Listener

	mu      sync.Mutex
	chunks  map[wire.Digest][]byte
	files   map[string][]wire.Digest // published path → digests
	latest  map[string]string        // "type/id/name.ext" → newest published path
	dirs    map[string]bool          // snapshot dirs created
	uploads int                      // UploadChunk packets received

	partSize int // digests per HashListPart
	busy     bool
	// corrupt, if set, may change a chunk's data (a copy) before a
	// DownloadChunks reply carries it.
	corrupt func(d wire.Digest, data []byte) []byte
}

func newMemPeer(t testing.TB) *memPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &memPeer{
		t: t, ln: ln, partSize: 3,
		chunks: map[wire.Digest][]byte{}, files: map[string][]wire.Digest{},
		latest: map[string]string{}, dirs: map[string]bool{},
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
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

// dial returns a client of the peer, closed at the end of the test.
func (p *memPeer) dial(t testing.TB) *pmx.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pmx.Dial(ctx, p.ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (p *memPeer) uploadCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.uploads
}

func (p *memPeer) file(path string) ([]wire.Digest, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ds, ok := p.files[path]
	return ds, ok
}

// put stores chunks and publishes a file of them under path.
func (p *memPeer) put(path string, chunks ...[]byte) []wire.Digest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ds []wire.Digest
	for _, c := range chunks {
		d := wire.Digest(sha256.Sum256(c))
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
	digests []wire.Digest
	end     uint64 // dynamic: the next offset
	refused bool
}

func (p *memPeer) serve(conn net.Conn) {
	r, w := wire.NewReader(conn), wire.NewWriter(conn)
	w.WritePacket(&wire.Hello{ID: 0, Version: wire.Version})
	w.Flush()
	streams := map[uint8]*memStream{}
	for {
		pkt, err := r.ReadPacket()
		if err != nil {
			return
		}
		for _, reply := range p.handle(pkt, streams) {
			if err := w.WritePacket(reply); err != nil {
				p.t.Errorf("memPeer: writing %s: %v", reply.PacketType(), err)
				return
			}
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func generic(id uint8, format string, args ...any) wire.Packet {
	return &wire.Error{ID: id, Code: wire.ErrorGeneric, Reason: fmt.Sprintf(format, args...)}
}

func (p *memPeer) handle(pkt wire.Packet, streams map[uint8]*memStream) []wire.Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := pkt.PacketID()
	switch q := pkt.(type) {
	case *wire.UploadChunk:
		p.uploads++
		if got := wire.Digest(sha256.Sum256(q.Data)); got != q.Digest {
			return []wire.Packet{generic(id, "digest mismatch: data hashes to %s, not %s", got, q.Digest)}
		}
		p.chunks[q.Digest] = append([]byte(nil), q.Data...)
		return []wire.Packet{&wire.Ok{ID: id}}
	case *wire.CreateBackup:
		if streams[id] != nil {
			p.t.Errorf("memPeer: CreateBackup with id %d, which is an open stream", id)
		}
		path := q.Path()
		dir := path[:strings.LastIndexByte(path, '/')]
		if q.Exclusive() && p.dirs[dir] {
			return []wire.Packet{generic(id, "snapshot %s exists", dir)}
		}
		p.dirs[dir] = true
		s := &memStream{path: path, key: fmt.Sprintf("%s/%s/%s", q.BackupType, q.BackupID, path[strings.LastIndexByte(path, '/')+1:]), fixed: !q.Dynamic()}
		if s.fixed {
			n := (q.FileSize + uint64(q.ChunkSize) - 1) / uint64(q.ChunkSize)
			s.slots, s.digests = make([]bool, n), make([]wire.Digest, n)
		}
		streams[id] = s
		return []wire.Packet{&wire.BackupCreated{ID: id, Path: path}}
	case *wire.BackupDataFixed:
		s := streams[id]
		for _, e := range q.Entries {
			switch {
			case s == nil || !s.fixed:
				return []wire.Packet{generic(id, "no fixed stream %d", id)}
			case e.Index >= uint64(len(s.slots)):
				s.refused = true
				return []wire.Packet{generic(id, "slot %d out of range", e.Index)}
			case p.chunks[e.Digest] == nil:
				s.refused = true
				return []wire.Packet{generic(id, "slot %d: chunk %s not stored", e.Index, e.Digest)}
			}
			s.slots[e.Index], s.digests[e.Index] = true, e.Digest
		}
	case *wire.BackupDataDynamic:
		s := streams[id]
		for _, e := range q.Entries {
			switch {
			case s == nil || s.fixed:
				return []wire.Packet{generic(id, "no dynamic stream %d", id)}
			case e.Offset != s.end:
				s.refused = true
				return []wire.Packet{generic(id, "offset %d, want %d", e.Offset, s.end)}
			case p.chunks[e.Digest] == nil:
				s.refused = true
				return []wire.Packet{generic(id, "offset %d: chunk %s not stored", e.Offset, e.Digest)}
			}
			s.end += uint64(len(p.chunks[e.Digest]))
			s.digests = append(s.digests, e.Digest)
		}
	case *wire.BackupFinished:
		s := streams[id]
		delete(streams, id)
		switch {
		case s == nil:
			return []wire.Packet{generic(id, "no stream %d", id)}
		case s.refused:
			return []wire.Packet{generic(id, "%s: an entry was refused", s.path)}
		}
		for i, ok := range s.slots {
			if !ok {
				return []wire.Packet{generic(id, "%s: slot %d not filled", s.path, i)}
			}
		}
		p.files[s.path] = s.digests
		p.latest[s.key] = s.path
		return []wire.Packet{&wire.Ok{ID: id}}
	case *wire.GetHashList:
		if p.busy {
			return []wire.Packet{&wire.Error{ID: id, Code: wire.ErrorBusy, Reason: "a hash list is streaming"}}
		}
		path := q.Name
		if parts := strings.Split(path, "/"); len(parts) == 4 && parts[2] == "latest" {
			path = p.latest[parts[0]+"/"+parts[1]+"/"+parts[3]]
		}
		ds, ok := p.files[path]
		if !ok {
			return []wire.Packet{generic(id, "no snapshot file %s", q.Name)}
		}
		var out []wire.Packet
		for len(ds) > 0 {
			n := min(p.partSize, len(ds))
			out = append(out, &wire.HashListPart{ID: id, Digests: ds[:n]})
			ds = ds[n:]
		}
		return append(out, &wire.HashListPart{ID: id})
	case *wire.DownloadChunks:
		var out []wire.Packet
		for i, d := range q.Digests {
			data := p.chunks[d]
			if data == nil {
				return append(out, generic(id, "chunk %s not found", d))
			}
			if p.corrupt != nil {
				data = p.corrupt(d, append([]byte(nil), data...))
			}
			out = append(out, &wire.Chunk{ID: id, Offset: uint64(i), Digest: d, Data: data})
		}
		return out
	default:
		p.t.Errorf("memPeer: unexpected %s", pkt.PacketType())
	}
	return nil
}
