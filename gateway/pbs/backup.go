package pbs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/format/pbsidx"
	"github.com/chunkbridge/chunkbridge/format/pbsindex"
	"github.com/chunkbridge/chunkbridge/format/pbsmanifest"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// manifestName is the snapshot's manifest, written last (at finish).
const manifestName = "index.json.blob"

// fixedChunkSize is PBS's fixed index chunk size: clients never send one.
const fixedChunkSize = 4 << 20

// maxIndexFile bounds a stored index file the gateway reads whole to
// convert: the catalog's own limit of 16 Mi entries.
const maxIndexFile = pbsindex.HeaderSize + pbsindex.DefaultMaxEntries*pbsindex.DynamicEntrySize

// backup is one backup session: one snapshot, written by one connection.
// Nothing of it is visible to PBS listings before finish writes its
// manifest.
type backup struct {
	srv    *Server
	ctx    context.Context
	p      auth.Principal
	snap   snapshot
	log    *slog.Logger
	remote string
	mux    *http.ServeMux
	// prev is the previous snapshot (previousSnapshot), or nil.
	prev *chunkbridgev1.Snapshot
	// uploads bounds the chunk and blob bytes read and not yet stored.
	uploads *session.Budget

	putMu    sync.Mutex
	uploader *client.Uploader
	// files serialises previous: an index is read whole and converted.
	files sync.Mutex

	mu      sync.Mutex
	known   map[knownKey]uint64 // chunks usable in appends, and their sizes
	writers map[int]*writer
	nextWID int
	written int // files closed and blobs stored
	// storing counts closes and blob uploads under way: finish waits for
	// none, so the manifest never names a file not yet stored.
	storing int
	// entries counts the chunk entries of the open writers (MaxEntries).
	entries  int
	manifest []byte
	// modes is the crypt mode of each manifest file (manifestModes), and
	// archives whether each index closed in this session is encrypted:
	// finish checks they agree.
	modes    map[string]pbsmanifest.CryptMode
	archives map[string]bool
	finished bool
	// manifestHeld is the manifest's share of the file budget, until
	// finish stores it or the session ends.
	manifestHeld *fileShare
}

// knownKey is a chunk as appends name it: a plain and an encrypted chunk
// are two chunks, even of one digest (they are in two chunk spaces).
type knownKey struct {
	id        client.ID
	encrypted bool
}

// writer is one open index.
type writer struct {
	name    string // archive name, e.g. root.pxar.didx
	fixed   bool
	size    uint64 // fixed: the image size; dynamic: the running end
	slots   uint64
	count   uint64
	digests map[uint64]client.ID // fixed: by slot
	entries []client.SnapshotEntry
	csum    *pbsidx.Csum // dynamic: as entries arrive
	// reused: a fixed writer that started as a copy of the previous
	// snapshot's index (reuse-csum). Its close counts the appends of this
	// session, as upstream does: appended and appendedBytes.
	reused        bool
	appended      uint64
	appendedBytes uint64
	// mode is set by the first chunk uploaded or appended: an archive is
	// all plain or all encrypted (crypt-mode encrypt), never mixed.
	mode archiveMode
}

type archiveMode uint8

const (
	modeUnset archiveMode = iota
	modePlain
	modeEncrypted
)

func modeOf(encrypted bool) archiveMode {
	if encrypted {
		return modeEncrypted
	}
	return modePlain
}

// take sets the writer's mode, or refuses a chunk of the other one.
func (wr *writer) take(m archiveMode) error {
	if wr.mode == modeUnset {
		wr.mode = m
	}
	if wr.mode != m {
		return fmt.Errorf("%w: archive %s mixes encrypted and plain chunks: an archive is backed up with one crypt mode", apierr.ErrInvalid, wr.name)
	}
	return nil
}

func (s *Server) newBackup(ctx context.Context, p auth.Principal, snap snapshot, remote string) (*backup, error) {
	b := &backup{
		srv: s, ctx: ctx, p: p, snap: snap, remote: remote,
		log:     s.log().With("remote", remote, "principal", p.Name, "snapshot", snap.dir()),
		uploads: session.NewBudget(session.OrDefault(s.UploadBytes, defaultUploadBytes)),
		known:   map[knownKey]uint64{}, writers: map[int]*writer{}, archives: map[string]bool{},
	}
	// A snapshot is written once: an existing one is refused before any
	// upload (the catalog would refuse its files anyway). The same listing
	// gives the previous snapshot, once per session as upstream's
	// last_backup: previous and reuse-csum do not list the group again
	// for every archive.
	snaps, err := s.Catalog.ListSnapshots(ctx, snap.ns, snap.typ, snap.id)
	if err != nil {
		return nil, fmt.Errorf("listing the backup group: %w", err)
	}
	for _, sn := range snaps { // newest first
		if sn.GetTime().AsTime().Equal(snap.time) {
			return nil, fmt.Errorf("%w: snapshot %s exists already; back up under a new time", apierr.ErrExists, snap.dir())
		}
		if b.prev == nil && sn.GetTime().AsTime().Before(snap.time) && hasManifest(sn) {
			b.prev = sn
		}
	}
	m := http.NewServeMux()
	m.HandleFunc("GET /previous", b.previous)
	m.HandleFunc("GET /previous_backup_time", b.previousTime)
	m.HandleFunc("POST /dynamic_index", b.create)
	m.HandleFunc("POST /fixed_index", b.create)
	m.HandleFunc("POST /dynamic_chunk", b.chunk)
	m.HandleFunc("POST /fixed_chunk", b.chunk)
	m.HandleFunc("PUT /dynamic_index", b.appendEntries)
	m.HandleFunc("PUT /fixed_index", b.appendEntries)
	m.HandleFunc("POST /dynamic_close", b.close)
	m.HandleFunc("POST /fixed_close", b.close)
	m.HandleFunc("POST /blob", b.blob)
	m.HandleFunc("POST /finish", b.finish)
	m.HandleFunc("GET /speedtest", b.speedtest)
	b.mux = m
	return b, nil
}

func (b *backup) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := b.srv.boundBody(w); err != nil {
		b.fail(w, r, err)
		return
	}
	r.URL.Path = cleanPath(r.URL.Path)
	r = r.WithContext(auth.NewContext(r.Context(), b.p))
	b.mux.ServeHTTP(w, r)
}

// boundBody makes a session request's body (a chunk, a blob, JSON
// parameters, a speedtest) readable only within BodyTimeout: a client
// that trickles one, or stops and answers pings, holds neither the stream
// nor its share of the session's budgets for longer.
func (s *Server) boundBody(w http.ResponseWriter) error {
	if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(session.OrDefault(s.BodyTimeout, 2*time.Minute))); err != nil {
		return fmt.Errorf("bound the request's reading: %w", err)
	}
	return nil
}

// fail answers a refused request, logging it.
func (b *backup) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, apierr.ErrPermission) {
		b.srv.audit(b.p, b.remote, r.Method+" "+r.URL.Path, err)
	} else {
		b.log.Info("request refused", "call", r.Method+" "+r.URL.Path, "err", err)
	}
	replyErr(w, err)
}

// end runs when the connection is gone: an unfinished snapshot's open
// writers are dropped (their files were never published).
func (b *backup) end() {
	b.putMu.Lock()
	if b.uploader != nil {
		b.uploader.Close()
	}
	b.putMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.manifestHeld.release()
	b.manifestHeld = nil
	if !b.finished && (b.written > 0 || len(b.writers) > 0) {
		b.log.Warn("backup session ended without finish; no manifest was written, so PBS listings do not show the snapshot")
	}
}

// previousSnapshot is the newest snapshot of the group before this one
// that has a manifest, as the session's start found it.
func (b *backup) previousSnapshot() (*chunkbridgev1.Snapshot, error) {
	if b.prev == nil {
		return nil, fmt.Errorf("%w: no previous snapshot of %s/%s", apierr.ErrNotFound, b.snap.typ, b.snap.id)
	}
	return b.prev, nil
}

func hasManifest(sn *chunkbridgev1.Snapshot) bool {
	for _, bl := range sn.GetBlobs() {
		if bl.GetName() == manifestName {
			return true
		}
	}
	return false
}

func (b *backup) previousTime(w http.ResponseWriter, r *http.Request) {
	sn, err := b.previousSnapshot()
	if errors.Is(err, apierr.ErrNotFound) {
		reply(w, nil)
		return
	}
	if err != nil {
		b.fail(w, r, err)
		return
	}
	reply(w, sn.GetTime().AsTime().Unix())
}

// previous sends a file of the previous snapshot; an index's chunks become
// known to this session, so appends may reference them unsent.
func (b *backup) previous(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	name, _ := ps.str("archive-name")
	sn, err := b.previousSnapshot()
	if err != nil {
		b.fail(w, r, err)
		return
	}
	dir := snapshotOf(sn).dir()
	encrypted := fileEncrypted(sn, name)
	b.files.Lock()
	defer b.files.Unlock()
	data, chunks, held, err := b.srv.readFile(r.Context(), sn, dir, name)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	defer held.release() // once data is written
	if err := b.srv.allStored(r.Context(), chunks, encrypted, dir+"/"+name); err != nil {
		b.fail(w, r, err)
		return
	}
	b.mu.Lock()
	if len(b.known)+len(chunks) > session.OrDefault(b.srv.MaxChunks, defaultMaxChunks) {
		b.mu.Unlock()
		b.fail(w, r, fmt.Errorf("%w: this session knows too many chunks", apierr.ErrExhausted))
		return
	}
	for id, size := range chunks {
		b.known[knownKey{id, encrypted}] = size
	}
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(data)
}

// findBatch bounds the ids of one existence check of allStored.
const findBatch = 8192

// allStored refuses a previous index whose chunks are not all in the
// store (verify quarantined one, or it was deleted). Clients take their
// known chunks from the index served, not from the server, and append
// them unsent: knowing a gone chunk would fail the backup at close, and
// leaving it out of the index would corrupt clients that reuse the
// previous index by offset. Refused, the client backs the archive up
// whole and the upload heals the store, as upstream refuses the previous
// snapshot of a failed verify.
func (s *Server) allStored(ctx context.Context, chunks map[client.ID]uint64, encrypted bool, file string) error {
	find := s.Chunks.FindMissing
	if encrypted {
		find = s.Chunks.FindMissingEncrypted
	}
	ids := make([]client.ID, 0, min(len(chunks), findBatch))
	gone := 0
	check := func() error {
		if len(ids) == 0 {
			return nil
		}
		missing, err := find(ctx, ids)
		gone += len(missing)
		ids = ids[:0]
		return err
	}
	for id := range chunks {
		ids = append(ids, id)
		if len(ids) == findBatch {
			if err := check(); err != nil {
				return fmt.Errorf("checking the chunks of %s: %w", file, err)
			}
		}
	}
	if err := check(); err != nil {
		return fmt.Errorf("checking the chunks of %s: %w", file, err)
	}
	if gone > 0 {
		return fmt.Errorf("%w: %d of the %d chunks of the previous %s are gone from the store (quarantined by verify, or deleted): back this archive up whole, which stores them again", apierr.ErrNotFound, gone, len(chunks), file)
	}
	return nil
}

// readFile reads the snapshot file name of sn (in dir) for a client: a
// blob as stored, an index converted to today's PBS format, with its
// chunks and their sizes. held is its share of the file budget, taken
// before the read: the caller releases it once done with data and chunks.
func (s *Server) readFile(ctx context.Context, sn *chunkbridgev1.Snapshot, dir, name string) (data []byte, chunks map[client.ID]uint64, held *fileShare, err error) {
	if strings.Contains(name, "/") || name == "" {
		return nil, nil, nil, fmt.Errorf("%w: file name %q", apierr.ErrInvalid, name)
	}
	blob, fixed := strings.HasSuffix(name, ".blob"), strings.HasSuffix(name, ".fidx")
	if !blob && !fixed && !strings.HasSuffix(name, ".didx") {
		return nil, nil, nil, fmt.Errorf("%w: file name %q: want a .didx, .fidx or .blob name", apierr.ErrInvalid, name)
	}
	cost := func(size int64) int64 {
		if blob {
			return size
		}
		return indexCost(size, fixed)
	}
	limit := int64(maxIndexFile)
	if blob {
		limit = datablob.MaxEncodedSize
	}
	// A stored file never changes, so the listing's size is exact; a
	// file it does not list takes the largest share until it is read.
	if size := listedSize(sn, name); size >= 0 {
		limit = min(limit, size)
	}
	if held, err = s.holdFile(ctx, cost(limit)); err != nil {
		return nil, nil, nil, fmt.Errorf("reading %s/%s: %w", dir, name, err)
	}
	raw, err := s.Catalog.GetSnapshotFile(ctx, dir+"/"+name, limit)
	if err == nil {
		held.shrink(cost(int64(len(raw))))
		data, chunks, err = convertFile(dir, name, raw, blob, fixed)
	}
	if err != nil {
		held.release()
		return nil, nil, nil, err
	}
	return data, chunks, held, nil
}

// convertFile converts a stored file as readFile serves it.
func convertFile(dir, name string, raw []byte, blob, fixed bool) ([]byte, map[client.ID]uint64, error) {
	if blob {
		return raw, nil, nil
	}
	chunks := map[client.ID]uint64{}
	if fixed {
		f, err := pbsindex.ParseFixed(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: stored index %s/%s: %v", apierr.ErrDataLoss, dir, name, err)
		}
		out := &pbsidx.Fixed{UUID: f.UUID, CTime: int64(f.CTime), Size: f.Size, ChunkSize: f.ChunkSize, Digests: f.Digests}
		for i, d := range f.Digests {
			chunks[client.ID(d)] = slotSize(f.Size, f.ChunkSize, uint64(i))
		}
		data, err := pbsidx.AppendFixed(nil, out)
		return data, chunks, err
	}
	d, err := pbsindex.ParseDynamic(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: stored index %s/%s: %v", apierr.ErrDataLoss, dir, name, err)
	}
	out := &pbsidx.Dynamic{UUID: d.UUID, CTime: int64(d.CTime), Entries: make([]pbsidx.DynamicEntry, len(d.Entries))}
	var start uint64
	for i, e := range d.Entries {
		out.Entries[i] = pbsidx.DynamicEntry{End: e.End, Digest: e.Digest}
		chunks[client.ID(e.Digest)] = e.End - start
		start = e.End
	}
	data, err := pbsidx.AppendDynamic(nil, out)
	return data, chunks, err
}

// slotSize is the size of a fixed index's chunk in slot (of a size-byte
// image in chunkSize chunks): chunkSize, but what is left for the last.
func slotSize(size, chunkSize, slot uint64) uint64 {
	return min(chunkSize, size-slot*chunkSize)
}

// archiveName checks an index's archive name.
func archiveName(name string, fixed bool) error {
	ext := ".didx"
	if fixed {
		ext = ".fidx"
	}
	base, ok := strings.CutSuffix(name, ext)
	if !ok || base == "" || strings.ContainsAny(name, "/\\\x00") || len(name) > 255 || name == manifestName {
		return fmt.Errorf("%w: archive-name %q: want NAME%s", apierr.ErrInvalid, name, ext)
	}
	return nil
}

func (b *backup) create(w http.ResponseWriter, r *http.Request) {
	fixed := r.URL.Path == "/fixed_index"
	ps, err := readParams(r)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	name, _ := ps.str("archive-name")
	if err := archiveName(name, fixed); err != nil {
		b.fail(w, r, err)
		return
	}
	wr := &writer{name: name, fixed: fixed}
	if fixed {
		size, err := ps.int("size")
		if err != nil || size < 0 {
			b.fail(w, r, fmt.Errorf("%w: fixed_index size: %v", apierr.ErrInvalid, err))
			return
		}
		wr.size = uint64(size)
		wr.slots, _ = pbsidx.Slots(wr.size, fixedChunkSize)
		if wr.slots > pbsindex.DefaultMaxEntries {
			b.fail(w, r, fmt.Errorf("%w: fixed_index size %d: more than %d chunks", apierr.ErrInvalid, size, pbsindex.DefaultMaxEntries))
			return
		}
		wr.digests = map[uint64]client.ID{}
		if csum, ok := ps.str("reuse-csum"); ok {
			if err := b.reuse(r.Context(), wr, csum); err != nil {
				b.fail(w, r, err)
				return
			}
		}
	} else {
		wr.csum = pbsidx.NewCsum()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		b.fail(w, r, fmt.Errorf("%w: the backup is finished", apierr.ErrInvalid))
		return
	}
	if len(b.writers) >= session.OrDefault(b.srv.MaxOpenWriters, defaultWriters) {
		b.fail(w, r, fmt.Errorf("%w: %d index writers are open; close one first", apierr.ErrInvalid, len(b.writers)))
		return
	}
	for _, o := range b.writers {
		if o.name == name {
			b.fail(w, r, fmt.Errorf("%w: archive %s is open already", apierr.ErrExists, name))
			return
		}
	}
	if wr.reused {
		// The copy's entries count against MaxEntries as appended ones.
		if limit := session.OrDefault(b.srv.MaxEntries, pbsindex.DefaultMaxEntries); b.entries+int(wr.count) > limit {
			b.fail(w, r, fmt.Errorf("%w: reusing %s's %d chunk entries would pass the %d this session's open indexes may hold: close some first", apierr.ErrExhausted, name, wr.count, limit))
			return
		}
		b.entries += int(wr.count)
	}
	b.nextWID++
	b.writers[b.nextWID] = wr
	reply(w, b.nextWID)
}

// reuse starts the fixed writer wr as a copy of the previous snapshot's
// index of the same archive (reuse-csum: Proxmox VE's dirty-bitmap
// backups then send only the changed chunks). As upstream, that index must
// exist and sum to csum; here it must also have the same size, and all its
// chunks must still be stored (a copy naming a quarantined chunk would only
// fail at close). wr is not shared yet: the session's entry count is taken
// by create.
func (b *backup) reuse(ctx context.Context, wr *writer, csum string) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: cannot reuse the previous index of %s: %s; back up the whole image (without reuse-csum)", apierr.ErrInvalid, wr.name, fmt.Sprintf(format, args...))
	}
	sn, err := b.previousSnapshot()
	if errors.Is(err, apierr.ErrNotFound) {
		return refuse("no previous backup of %s/%s", b.snap.typ, b.snap.id)
	}
	if err != nil {
		return fmt.Errorf("reuse-csum: finding the previous backup: %w", err)
	}
	dir := snapshotOf(sn).dir()
	b.files.Lock()
	defer b.files.Unlock()
	// The previous index, its digests and their maps are held until the
	// chunks are checked; the writer's slots then count in MaxEntries.
	limit := int64(maxIndexFile)
	if size := listedSize(sn, wr.name); size >= 0 {
		limit = min(limit, size)
	}
	held, err := b.srv.holdFile(ctx, reuseCost(limit))
	if err != nil {
		return fmt.Errorf("reuse-csum: reading %s/%s: %w", dir, wr.name, err)
	}
	defer held.release()
	raw, err := b.srv.Catalog.GetSnapshotFile(ctx, dir+"/"+wr.name, limit)
	if err == nil {
		held.shrink(reuseCost(int64(len(raw))))
	}
	if errors.Is(err, apierr.ErrNotFound) {
		return refuse("the previous backup %s has no such archive", dir)
	}
	if err != nil {
		return fmt.Errorf("reuse-csum: reading %s/%s: %w", dir, wr.name, err)
	}
	f, err := pbsindex.ParseFixed(raw)
	if err != nil {
		return fmt.Errorf("%w: stored index %s/%s: %v", apierr.ErrDataLoss, dir, wr.name, err)
	}
	raw = nil
	if sum := (&pbsidx.Fixed{Digests: f.Digests}).Csum(); !strings.EqualFold(csum, hex.EncodeToString(sum[:])) {
		return refuse("reuse-csum %q does not match the previous backup's %x", csum, sum)
	}
	if f.Size != wr.size || f.ChunkSize != fixedChunkSize {
		return refuse("it is a %d-byte image in %d-byte chunks, not %d bytes in %d", f.Size, f.ChunkSize, wr.size, fixedChunkSize)
	}
	encrypted := fileEncrypted(sn, wr.name)
	chunks := make(map[client.ID]uint64, len(f.Digests))
	for slot, d := range f.Digests {
		wr.digests[uint64(slot)] = client.ID(d)
		chunks[client.ID(d)] = 0
	}
	if err := b.srv.allStored(ctx, chunks, encrypted, dir+"/"+wr.name); err != nil {
		return fmt.Errorf("reuse-csum: %w", err)
	}
	wr.count, wr.reused, wr.mode = uint64(len(f.Digests)), true, modeOf(encrypted)
	return nil
}

// readBody reads a DataBlob body of exactly n bytes within the session's
// upload budget; release gives the bytes back.
func (b *backup) readBody(r *http.Request, n, limit int64) (data []byte, release func(), err error) {
	if n < datablob.HeaderSize || n > limit {
		return nil, nil, fmt.Errorf("%w: encoded-size %d: want %d to %d", apierr.ErrInvalid, n, datablob.HeaderSize, limit)
	}
	if r.ContentLength >= 0 && r.ContentLength != n {
		return nil, nil, fmt.Errorf("%w: encoded-size %d but the body has %d bytes", apierr.ErrInvalid, n, r.ContentLength)
	}
	if err := b.uploads.Acquire(r.Context(), n); err != nil {
		return nil, nil, err
	}
	release = func() { b.uploads.Release(n) }
	data = make([]byte, n)
	if _, err := io.ReadFull(r.Body, data); err != nil {
		release()
		return nil, nil, fmt.Errorf("%w: reading %d bytes of body: %v", apierr.ErrInvalid, n, err)
	}
	var one [1]byte
	if m, _ := io.ReadFull(r.Body, one[:]); m > 0 {
		release()
		return nil, nil, fmt.Errorf("%w: the body is longer than encoded-size %d", apierr.ErrInvalid, n)
	}
	return data, release, nil
}

// speedtest reads and drops a body of at most one encoded chunk (what
// proxmox-backup-client benchmark sends per request).
func (b *backup) speedtest(w http.ResponseWriter, r *http.Request) {
	n, err := io.Copy(io.Discard, io.LimitReader(r.Body, datablob.MaxEncodedChunkSize+1))
	if err == nil && n > datablob.MaxEncodedChunkSize {
		err = fmt.Errorf("%w: a speedtest body is at most %d bytes", apierr.ErrInvalid, datablob.MaxEncodedChunkSize)
	}
	if err != nil {
		b.fail(w, r, err)
		return
	}
	reply(w, nil)
}

// chunk stores one uploaded chunk.
func (b *backup) chunk(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	wid, _ := strconv.Atoi(q.Get("wid"))
	b.mu.Lock()
	wr, open := b.writers[wid]
	b.mu.Unlock()
	if !open {
		b.fail(w, r, fmt.Errorf("%w: no open writer %q", apierr.ErrInvalid, q.Get("wid")))
		return
	}
	id, err := client.ParseID(q.Get("digest"))
	if err != nil {
		b.fail(w, r, fmt.Errorf("%w: digest %q: want 64 hex characters", apierr.ErrInvalid, q.Get("digest")))
		return
	}
	size, err := strconv.ParseInt(q.Get("size"), 10, 64)
	if err != nil || size < 1 || size > datablob.MaxChunkSize {
		b.fail(w, r, fmt.Errorf("%w: size %q: want 1 to %d", apierr.ErrInvalid, q.Get("size"), datablob.MaxChunkSize))
		return
	}
	enc, _ := strconv.ParseInt(q.Get("encoded-size"), 10, 64)
	body, release, err := b.readBody(r, enc, datablob.MaxEncodedChunkSize)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	defer release()
	blob, err := datablob.ParseChunk(body)
	if err == nil && blob.Encrypted() {
		b.encryptedChunk(w, r, wr, id, size, blob, body)
		return
	}
	var plain []byte
	if err == nil {
		plain, err = blob.Decode(int(size))
	}
	if err == nil && int64(len(plain)) != size {
		err = fmt.Errorf("the chunk decodes to %d bytes, not size %d", len(plain), size)
	}
	if err != nil {
		b.fail(w, r, fmt.Errorf("%w: chunk %s: %v", apierr.ErrInvalid, id, err))
		return
	}
	up := client.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: plain}
	if blob.Kind == datablob.Zstd {
		// Stored as sent: the service checks the digest of its content.
		up.Encoding, up.Data = chunkbridgev1.Encoding_ENCODING_ZSTD, blob.Payload
	}
	b.store(w, r, wr, up, uint64(size))
}

// encryptedChunk stores a chunk of an encrypted archive: its DataBlob as
// sent (Parse checked the CRC), in the encrypted chunk space. Neither its
// digest, keyed with the client's secret, nor its size can be checked
// against data the server cannot decrypt; an uncompressed encrypted blob
// at least carries exactly size bytes of ciphertext.
func (b *backup) encryptedChunk(w http.ResponseWriter, r *http.Request, wr *writer, id client.ID, size int64, blob datablob.Blob, body []byte) {
	if blob.Kind == datablob.Encrypted && int64(len(blob.Payload)) != size {
		b.fail(w, r, fmt.Errorf("%w: chunk %s: %d bytes of ciphertext, not size %d", apierr.ErrInvalid, id, len(blob.Payload), size))
		return
	}
	up := client.Upload{ID: id, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_DATABLOB,
		Data: body, Encrypted: true, Size: size}
	b.store(w, r, wr, up, uint64(size))
}

// store uploads a chunk of wr's archive and makes it known to appends.
func (b *backup) store(w http.ResponseWriter, r *http.Request, wr *writer, up client.Upload, size uint64) {
	key := knownKey{up.ID, up.Encrypted}
	b.mu.Lock()
	err := wr.take(modeOf(up.Encrypted))
	if _, dup := b.known[key]; err == nil && !dup && len(b.known) >= session.OrDefault(b.srv.MaxChunks, defaultMaxChunks) {
		// Refused before it is stored: an OK here would promise an
		// append that then finds no such chunk.
		err = fmt.Errorf("%w: this session knows too many chunks", apierr.ErrExhausted)
	}
	b.mu.Unlock()
	if err != nil {
		b.fail(w, r, fmt.Errorf("chunk %s: %w", up.ID, err))
		return
	}
	if err := b.put(r.Context(), up); err != nil {
		b.fail(w, r, fmt.Errorf("chunk %s: %w", up.ID, err))
		return
	}
	b.mu.Lock()
	b.known[key] = size // concurrent uploads may pass the cap by at most the streams open
	b.mu.Unlock()
	reply(w, nil)
}

// put stores one chunk through the session's ordered uploader and waits
// for its result.
func (b *backup) put(ctx context.Context, up client.Upload) error {
	res := make(chan client.Result, 1)
	b.putMu.Lock()
	if b.uploader == nil {
		u, err := b.srv.Chunks.NewUploader(b.ctx, client.UploadOptions{})
		if err != nil {
			b.putMu.Unlock()
			return err
		}
		b.uploader = u
	}
	err := b.uploader.Put(ctx, up, func(r client.Result) { res <- r })
	if err != nil {
		// A failed stream is replaced for the next chunk.
		b.uploader.Abort()
		b.uploader = nil
	}
	b.putMu.Unlock()
	if err != nil {
		return err
	}
	select {
	case r := <-res:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendEntries places uploaded or known chunks in an open index.
func (b *backup) appendEntries(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	wid, err := ps.int("wid")
	var digests []string
	var offsets []uint64
	if err == nil {
		err = errors.Join(ps.list("digest-list", &digests), ps.list("offset-list", &offsets))
	}
	if err == nil && len(digests) != len(offsets) {
		err = fmt.Errorf("%w: %d digests and %d offsets", apierr.ErrInvalid, len(digests), len(offsets))
	}
	if err != nil {
		b.fail(w, r, err)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	wr := b.writers[int(wid)]
	if wr == nil || wr.fixed != (r.URL.Path == "/fixed_index") {
		b.fail(w, r, fmt.Errorf("%w: no open writer %d of this kind", apierr.ErrInvalid, wid))
		return
	}
	for i, hexd := range digests {
		id, err := client.ParseID(hexd)
		if err != nil {
			b.fail(w, r, fmt.Errorf("%w: digest %q", apierr.ErrInvalid, hexd))
			return
		}
		size, ok := b.known[knownKey{id, wr.mode == modeEncrypted}]
		if !ok && wr.mode == modeUnset {
			// An archive's first append of known chunks sets its mode.
			size, ok = b.known[knownKey{id, true}]
			if ok {
				wr.mode = modeEncrypted
			}
		}
		if !ok {
			b.fail(w, r, fmt.Errorf("%w: no such chunk %s: upload it first (neither uploaded nor in the previous snapshot in this session, as a chunk of this archive's crypt mode)", apierr.ErrInvalid, id))
			return
		}
		if wr.mode == modeUnset {
			wr.mode = modePlain
		}
		off := offsets[i]
		if wr.fixed {
			slot := off / fixedChunkSize
			if off%fixedChunkSize != 0 || slot >= wr.slots || size != slotSize(wr.size, fixedChunkSize, slot) {
				b.fail(w, r, fmt.Errorf("%w: chunk %s of %d bytes at offset %d does not fit the %d-byte image's %d-byte slots", apierr.ErrInvalid, id, size, off, wr.size, fixedChunkSize))
				return
			}
			if _, dup := wr.digests[slot]; !dup {
				if err := b.hold(); err != nil {
					b.fail(w, r, err)
					return
				}
				wr.count++
			}
			wr.digests[slot] = id
			wr.appended++
			wr.appendedBytes += size
			continue
		}
		if off != wr.size {
			b.fail(w, r, fmt.Errorf("%w: chunk %s at offset %d: the index ends at %d", apierr.ErrInvalid, id, off, wr.size))
			return
		}
		if len(wr.entries) >= pbsindex.DefaultMaxEntries {
			b.fail(w, r, fmt.Errorf("%w: more than %d chunks in one index", apierr.ErrInvalid, pbsindex.DefaultMaxEntries))
			return
		}
		if err := b.hold(); err != nil {
			b.fail(w, r, err)
			return
		}
		wr.entries = append(wr.entries, client.SnapshotEntry{Offset: int64(off), ID: id})
		wr.size += size
		wr.count++
		wr.csum.AddEntry(wr.size, pbsidx.Digest(id))
	}
	reply(w, nil)
}

// hold counts one more entry held in the session's open indexes, or
// refuses it past MaxEntries; b.mu is held.
func (b *backup) hold() error {
	limit := session.OrDefault(b.srv.MaxEntries, pbsindex.DefaultMaxEntries)
	if b.entries >= limit {
		return fmt.Errorf("%w: this session's open indexes hold %d chunk entries, the most one session may: close some before appending more", apierr.ErrExhausted, limit)
	}
	b.entries++
	return nil
}

// close checks an index against the client's count, size and checksum,
// then publishes it in the snapshot.
func (b *backup) close(w http.ResponseWriter, r *http.Request) {
	ps, err := readParams(r)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	wid, err1 := ps.int("wid")
	count, err2 := ps.int("chunk-count")
	size, err3 := ps.int("size")
	csum, _ := ps.str("csum")
	if err := errors.Join(err1, err2, err3); err != nil {
		b.fail(w, r, err)
		return
	}
	b.mu.Lock()
	wr := b.writers[int(wid)]
	if wr == nil || wr.fixed != (r.URL.Path == "/fixed_close") {
		b.mu.Unlock()
		b.fail(w, r, fmt.Errorf("%w: no open writer %d of this kind", apierr.ErrInvalid, wid))
		return
	}
	delete(b.writers, int(wid)) // a failed close ends the writer: nothing is published
	b.entries -= int(wr.count)
	b.storing++
	b.mu.Unlock()
	defer b.stored()
	var sum [32]byte
	if wr.fixed {
		if wr.count != wr.slots {
			b.fail(w, r, fmt.Errorf("%w: %s: %d of %d chunks appended; nothing was published", apierr.ErrInvalid, wr.name, wr.count, wr.slots))
			return
		}
		c := pbsidx.NewCsum()
		wr.entries = make([]client.SnapshotEntry, wr.slots)
		for slot := range wr.slots {
			c.AddDigest(pbsidx.Digest(wr.digests[slot]))
			wr.entries[slot] = client.SnapshotEntry{Slot: int64(slot), ID: wr.digests[slot]}
		}
		sum = c.Sum()
	} else {
		sum = wr.csum.Sum()
	}
	wantCount, sizeOK := wr.count, uint64(size) == wr.size
	if wr.reused {
		// As upstream, an incremental writer's chunk-count counts this
		// session's appends; proxmox-backup-qemu sends the bytes it
		// appended as size (upstream checks none), others the image size.
		wantCount, sizeOK = wr.appended, sizeOK || uint64(size) == wr.appendedBytes
	}
	switch {
	case uint64(count) != wantCount:
		err = fmt.Errorf("chunk-count %d, but %d chunks were appended", count, wantCount)
	case !sizeOK:
		err = fmt.Errorf("size %d, but the chunks appended make %d bytes", size, wr.size)
	case !strings.EqualFold(csum, hex.EncodeToString(sum[:])):
		err = fmt.Errorf("csum %q, but the chunks appended sum to %x", csum, sum)
	}
	if err != nil {
		b.fail(w, r, fmt.Errorf("%w: %s: %v; nothing was published", apierr.ErrInvalid, wr.name, err))
		return
	}
	if err := b.publish(r.Context(), wr); err != nil {
		b.fail(w, r, fmt.Errorf("%s: %w", wr.name, err))
		return
	}
	b.mu.Lock()
	b.written++
	b.archives[wr.name] = wr.mode == modeEncrypted
	b.mu.Unlock()
	reply(w, nil)
}

// publish writes a closed index through the catalog, which checks every
// chunk is stored.
func (b *backup) publish(ctx context.Context, wr *writer) error {
	create := client.SnapshotCreate{Namespace: b.snap.ns, Type: b.snap.typ, BackupID: b.snap.id, Time: b.snap.time, Name: wr.name[:len(wr.name)-5], Fixed: wr.fixed,
		Encrypted: wr.mode == modeEncrypted}
	if wr.fixed {
		create.ChunkSize, create.FileSize = fixedChunkSize, int64(wr.size)
	}
	sw, err := b.srv.Catalog.WriteSnapshotFile(ctx, create)
	if err != nil {
		return err
	}
	defer sw.Abort()
	sent := make(chan error, 1)
	go func() {
		const batch = 4096
		for off := 0; off < len(wr.entries); off += batch {
			if err := sw.Entries(wr.entries[off:min(off+batch, len(wr.entries))]...); err != nil {
				sent <- err
				return
			}
		}
		sent <- sw.Commit()
	}()
	var refused error
	for {
		_, err := sw.Next()
		var re *client.RefusedEntry
		if errors.As(err, &re) {
			if refused == nil {
				refused = re
			}
			continue
		}
		if err != nil {
			<-sent
			if refused != nil {
				return fmt.Errorf("%w; nothing was published", refused)
			}
			return err
		}
		return <-sent
	}
}

// blob stores a blob file; the manifest waits for finish.
func (b *backup) blob(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("file-name")
	if !strings.HasSuffix(name, ".blob") || name == ".blob" || strings.ContainsAny(name, "/\\\x00") || len(name) > 255 {
		b.fail(w, r, fmt.Errorf("%w: file-name %q: want NAME.blob", apierr.ErrInvalid, name))
		return
	}
	if err := b.startStoring(); err != nil {
		b.fail(w, r, err)
		return
	}
	defer b.stored()
	enc, _ := strconv.ParseInt(q.Get("encoded-size"), 10, 64)
	limit := int64(datablob.MaxEncodedSize)
	if name == manifestName {
		limit = pbsmanifest.MaxSize + datablob.HeaderSize
	}
	// The body is held in the file budget until it is stored (a
	// manifest until finish stores it): sessions' blobs wait their turn.
	held, err := b.srv.holdFile(r.Context(), min(max(enc, 0), limit))
	if err != nil {
		b.fail(w, r, fmt.Errorf("blob %s: %w", name, err))
		return
	}
	defer func() { held.release() }()
	body, release, err := b.readBody(r, enc, limit)
	if err != nil {
		b.fail(w, r, err)
		return
	}
	defer release()
	blob, err := datablob.Parse(body)
	if err != nil {
		b.fail(w, r, fmt.Errorf("%w: blob %s: %v", apierr.ErrInvalid, name, err))
		return
	}
	if name == manifestName {
		if blob.Encrypted() {
			b.fail(w, r, fmt.Errorf("%w: the manifest may not be encrypted", apierr.ErrInvalid))
			return
		}
		plain, err := blob.Decode(pbsmanifest.MaxSize)
		var m *pbsmanifest.Manifest
		if err == nil {
			m, err = pbsmanifest.Parse(plain)
		}
		if err == nil && (string(m.BackupType) != b.snap.typ || m.BackupID != b.snap.id || m.BackupTime != b.snap.time.Unix()) {
			err = fmt.Errorf("it names %s/%s/%d, not this backup", m.BackupType, m.BackupID, m.BackupTime)
		}
		if err != nil {
			b.fail(w, r, fmt.Errorf("%w: manifest: %v", apierr.ErrInvalid, err))
			return
		}
		b.mu.Lock()
		b.manifest = body
		old := b.manifestHeld
		b.manifestHeld, held = held, old // the replaced manifest's share goes back
		b.modes = map[string]pbsmanifest.CryptMode{}
		for _, f := range m.Files {
			b.modes[f.Filename] = f.CryptMode
		}
		b.mu.Unlock()
		reply(w, nil)
		return
	}
	if err := b.srv.Catalog.PutSnapshotBlob(r.Context(), b.snap.ns, b.snap.typ, b.snap.id, b.snap.time, name, body); err != nil {
		b.fail(w, r, fmt.Errorf("blob %s: %w", name, err))
		return
	}
	b.mu.Lock()
	b.written++
	b.mu.Unlock()
	reply(w, nil)
}

// startStoring counts a blob upload under way, or refuses one after
// finish.
func (b *backup) startStoring() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return fmt.Errorf("%w: the backup is finished", apierr.ErrInvalid)
	}
	b.storing++
	if startedStoring != nil {
		startedStoring()
	}
	return nil
}

// startedStoring, set by tests, is called once startStoring counted an
// upload.
var startedStoring func()

// stored ends what startStoring or close counted.
func (b *backup) stored() {
	b.mu.Lock()
	b.storing--
	b.mu.Unlock()
}

// modesAgree checks that the manifest gives each index of this session
// the crypt mode its chunks came in: a restore decides from it whether to
// decrypt. Called with mu held.
func (b *backup) modesAgree() error {
	for name, encrypted := range b.archives {
		mode, listed := b.modes[name]
		if listed && (mode == pbsmanifest.CryptEncrypt) != encrypted {
			return fmt.Errorf("the manifest gives %s crypt-mode %s, but its chunks were uploaded %s", name, mode, map[bool]string{true: "encrypted", false: "plain"}[encrypted])
		}
	}
	return nil
}

// findSnapshot is snap as the catalog's listing of its group has it, or
// nil if the group has no such snapshot.
func (s *Server) findSnapshot(ctx context.Context, snap snapshot) (*chunkbridgev1.Snapshot, error) {
	snaps, err := s.Catalog.ListSnapshots(ctx, snap.ns, snap.typ, snap.id)
	if err != nil {
		return nil, fmt.Errorf("listing the backup group: %w", err)
	}
	for _, sn := range snaps {
		if sn.GetTime().AsTime().Equal(snap.time) {
			return sn, nil
		}
	}
	return nil, nil
}

// fileEncrypted reports whether the snapshot's index file name holds
// encrypted chunks.
func fileEncrypted(sn *chunkbridgev1.Snapshot, name string) bool {
	for _, f := range sn.GetFiles() {
		if f.GetName() == name {
			return f.GetEncrypted()
		}
	}
	return false
}

// finish publishes the manifest, which makes the snapshot visible.
func (b *backup) finish(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	var err error
	switch {
	case b.finished:
		err = errors.New("the backup is finished already")
	case len(b.writers) > 0:
		err = fmt.Errorf("%d index writers are still open; close them first", len(b.writers))
	case b.storing > 0:
		err = fmt.Errorf("%d files are still being stored; finish once their uploads are answered", b.storing)
	case b.written == 0:
		err = errors.New("nothing was written")
	case b.manifest == nil:
		err = errors.New("no manifest (index.json.blob) was uploaded")
	default:
		err = b.modesAgree()
	}
	manifest := b.manifest
	if err == nil {
		b.finished = true
	}
	b.mu.Unlock()
	if err != nil {
		b.fail(w, r, fmt.Errorf("%w: finish: %v", apierr.ErrInvalid, err))
		return
	}
	if err := b.srv.Catalog.PutSnapshotBlob(r.Context(), b.snap.ns, b.snap.typ, b.snap.id, b.snap.time, manifestName, manifest); err != nil {
		b.mu.Lock()
		b.finished = false // nothing was published: finish may be tried again
		b.mu.Unlock()
		b.fail(w, r, fmt.Errorf("finish: %w", err))
		return
	}
	b.mu.Lock()
	b.manifestHeld.release()
	b.manifestHeld = nil
	b.mu.Unlock()
	b.log.Info("backup finished")
	reply(w, nil)
}
