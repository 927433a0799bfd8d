// Package chunk is the ChunkService: it verifies, compresses, deduplicates,
// stores and serves content-addressed chunks on a storage.Store.
//
// Service holds the logic and knows nothing of gRPC; Server (grpc.go) adapts
// it to the generated chunkbridgev1.ChunkServiceServer.
package chunk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/mem"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Config tunes a Service. Zero values take the defaults.
type Config struct {
	// MaxConcurrentChunks bounds the chunks being decoded, verified,
	// compressed, stored or read at once across the process; with the
	// 16 MiB limit it bounds the service's working memory
	// (about 3 × 16 MiB per slot). Default: 4 × GOMAXPROCS.
	MaxConcurrentChunks int
	// PresenceCacheSize is how many ids known to be stored are remembered
	// (about 100 bytes each). Default 262 144; negative disables the cache.
	PresenceCacheSize int
	// StatConcurrency bounds the parallel existence checks of one
	// FindMissing call. Default 64.
	StatConcurrency int
	// Log receives quarantine events; nil discards them.
	Log *slog.Logger
	// Quota refuses new chunks of a tenant over its stored-bytes quota
	// and learns what each upload stores; nil for no quotas.
	Quota *quota.Book
}

// Service implements the chunk operations.
type Service struct {
	store    storage.Store // the root: domains are views of it
	domains  *domains
	codec    *codec
	presence *presence
	slots    chan struct{}
	statConc int
	metrics  *Metrics
	log      *slog.Logger
	quota    *quota.Book
	serving  serving

	// quarantineMu serialises quarantines of one id (striped by its
	// first byte); see Quarantine.
	quarantineMu [16]sync.Mutex

	written, deduplicated, received atomic.Int64
}

// New returns a Service on store. metrics may be nil.
func New(store storage.Store, cfg Config, metrics *Metrics) (*Service, error) {
	if cfg.MaxConcurrentChunks <= 0 {
		cfg.MaxConcurrentChunks = 4 * runtime.GOMAXPROCS(0)
	}
	if cfg.PresenceCacheSize == 0 {
		cfg.PresenceCacheSize = 1 << 18
	}
	if cfg.StatConcurrency <= 0 {
		cfg.StatConcurrency = 64
	}
	c, err := newCodec()
	if err != nil {
		return nil, fmt.Errorf("chunk service: zstd: %w", err)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ds := newDomains(store)
	svc := &Service{
		store:    store,
		domains:  ds,
		codec:    c,
		presence: newPresence(cfg.PresenceCacheSize, ds.count),
		slots:    make(chan struct{}, cfg.MaxConcurrentChunks),
		statConc: cfg.StatConcurrency,
		metrics:  metrics,
		log:      cfg.Log,
		quota:    cfg.Quota,
	}
	ds.onBind = svc.serving.bindingsChanged
	return svc, nil
}

// acquire takes one of the process-wide work slots.
func (s *Service) acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Service) release() { <-s.slots }

// Upload is one chunk as a client sends it.
type Upload struct {
	ID        ID
	Algorithm chunkbridgev1.DigestAlgorithm
	Encoding  chunkbridgev1.Encoding
	Data      []byte
	// Size is the uncompressed size the client declares for an encrypted
	// chunk (ENCODING_DATABLOB), which the server cannot decode to learn
	// it; ignored otherwise.
	Size int64
}

// Put verifies and stores one chunk. It reports created=false for a chunk
// that was already stored, in which case nothing was written. A payload
// that does not decode, or decodes to data that does not hash to the id,
// is refused and nothing is stored.
func (s *Service) Put(ctx context.Context, u Upload) (created bool, err error) {
	if err := auth.Check(ctx, auth.Append, "chunks"); err != nil {
		return false, err
	}
	defer func() { s.metrics.observeUpload(created, err) }()
	limit := MaxSize
	if IsEncrypted(ctx) {
		limit = maxEncrypted // a whole chunk's ciphertext and its header
	}
	if len(u.Data) > limit {
		return false, fmt.Errorf("chunk %s: %w: payload of %d bytes exceeds %d", u.ID, apierr.ErrInvalid, len(u.Data), limit)
	}
	if err := checkAlgorithm(u.Algorithm); err != nil {
		return false, fmt.Errorf("chunk %s: %w", u.ID, err)
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return false, err
	}
	if err := s.acquire(ctx); err != nil {
		return false, err
	}
	defer s.release()
	if d.encrypted {
		return s.putEncrypted(ctx, d, u)
	}

	data, err := s.codec.decode(u.Encoding, u.Data)
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", u.ID, err)
	}
	if len(data) > format.MaxChunk {
		// It could be stored but not restored through every protocol.
		return false, fmt.Errorf("chunk %s: %w: %d bytes exceed the largest chunk every protocol can restore (%d)", u.ID, apierr.ErrInvalid, len(data), format.MaxChunk)
	}
	sum, _ := digest(u.Algorithm, data)
	if sum != u.ID {
		return false, fmt.Errorf("chunk %s: %w: the data (%d bytes) hashes to %s with %s",
			u.ID, apierr.ErrDigestMismatch, len(data), sum, algorithmName(u.Algorithm))
	}
	return s.keep(ctx, d, u, int64(len(data)), func() []byte {
		if u.Encoding == chunkbridgev1.Encoding_ENCODING_ZSTD {
			return u.Data // an incoming zstd frame is kept as sent, once verified
		}
		return s.codec.compress(data)
	}, storage.Metadata{metaAlgorithm: algorithmName(u.Algorithm), metaSize: strconv.Itoa(len(data))})
}

// keep stores a checked upload of size bytes in d unless it is there
// already: the part of Put after its checks, plain or encrypted. stored
// makes the object's bytes, only once they are needed; meta gets the
// uploader's tenant.
func (s *Service) keep(ctx context.Context, d *domain, u Upload, size int64, stored func() []byte, meta storage.Metadata) (bool, error) {
	k := pkey{d.num, u.ID}
	s.received.Add(size)
	s.metrics.bytesReceived.Add(float64(size))
	if s.presence.has(k) {
		s.uploaded(ctx, u.ID)
		s.deduplicated.Add(1)
		return false, nil
	}
	tenant := auth.FromContext(ctx).Tenant
	if err := errors.Join(s.quota.LogicalFull(tenant), s.quota.CheckStored(ctx, tenant)); err != nil {
		// Over quota, a chunk that is already stored is still welcome:
		// it adds nothing.
		gen := s.presence.generation()
		if _, serr := d.store.Stat(ctx, u.ID.Key()); serr != nil {
			return false, fmt.Errorf("chunk %s: %w", u.ID, err)
		}
		s.presence.add(k, size, gen)
		s.uploaded(ctx, u.ID)
		s.deduplicated.Add(1)
		return false, nil
	}
	obj := stored()
	meta[MetaTenant] = tenant
	gen := s.presence.generation()
	created, err := d.store.PutIfAbsent(ctx, u.ID.Key(), bytes.NewReader(obj), int64(len(obj)), meta)
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", u.ID, err)
	}
	s.presence.add(k, size, gen)
	s.uploaded(ctx, u.ID)
	if created {
		s.quota.AddStored(tenant, int64(len(obj)))
		s.written.Add(1)
		s.metrics.bytesStored.Add(float64(len(obj)))
	} else {
		s.deduplicated.Add(1)
	}
	return created, nil
}

// MaxIDsPerCall bounds the ids of one FindMissing or Download call.
const MaxIDsPerCall = 100_000

// FindMissing returns the ids the store lacks, in the order given. Ids not
// in the presence cache are checked in parallel.
func (s *Service) FindMissing(ctx context.Context, ids []ID) ([]ID, error) {
	if err := auth.Check(ctx, auth.Read, "chunks"); err != nil {
		return nil, err
	}
	if len(ids) > MaxIDsPerCall {
		return nil, fmt.Errorf("%w: %d ids in one call, at most %d", apierr.ErrInvalid, len(ids), MaxIDsPerCall)
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return nil, err
	}
	s.metrics.idsChecked.Add(float64(len(ids)))
	missing := make([]bool, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.statConc)
	for i, id := range ids {
		if s.presence.has(pkey{d.num, id}) {
			s.metrics.cacheHits.Inc()
			continue
		}
		g.Go(func() error {
			gen := s.presence.generation()
			_, err := d.store.Stat(gctx, id.Key())
			switch {
			case err == nil:
				s.presence.add(pkey{d.num, id}, 0, gen)
			case errors.Is(err, storage.ErrNotFound):
				missing[i] = true
			default:
				return fmt.Errorf("check chunk %s: %w", id, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var out []ID
	for i, m := range missing {
		if m {
			out = append(out, ids[i])
		}
	}
	return out, nil
}

// Sizes returns the uncompressed size of each chunk, or -1 for a chunk the
// store lacks, in the order given. Sizes known from uploads and earlier
// stats come from the presence cache; the rest are read from storage
// metadata in parallel.
func (s *Service) Sizes(ctx context.Context, ids []ID) ([]int64, error) {
	if err := auth.Check(ctx, auth.Read, "chunks"); err != nil {
		return nil, err
	}
	if len(ids) > MaxIDsPerCall {
		return nil, fmt.Errorf("%w: %d ids in one call, at most %d", apierr.ErrInvalid, len(ids), MaxIDsPerCall)
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return nil, err
	}
	sizes := make([]int64, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.statConc)
	for i, id := range ids {
		if size, ok := s.presence.lookup(pkey{d.num, id}); ok && size > 0 {
			sizes[i] = size
			continue
		}
		g.Go(func() error {
			info, err := s.Stat(gctx, id)
			switch {
			case err == nil:
				sizes[i] = info.Size
			case errors.Is(err, apierr.ErrNotFound):
				sizes[i] = -1
			default:
				return err
			}
			return nil
		})
	}
	return sizes, g.Wait()
}

// Chunk is a stored chunk as read back.
type Chunk struct {
	ID        ID
	Algorithm chunkbridgev1.DigestAlgorithm
	Size      int64 // uncompressed
	Encoding  chunkbridgev1.Encoding
	Data      []byte
}

// Get reads one chunk as stored (zstd), or decoded and re-verified when raw
// is true.
func (s *Service) Get(ctx context.Context, id ID, raw bool) (Chunk, error) {
	return s.get(ctx, id, raw, nil)
}

// get is Get charging the chunk's buffers to c.
func (s *Service) get(ctx context.Context, id ID, raw bool, c *charge) (Chunk, error) {
	if err := auth.Check(ctx, auth.Read, "chunks"); err != nil {
		return Chunk{}, err
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return Chunk{}, err
	}
	if err := s.mayRead(ctx, d, id); err != nil {
		return Chunk{}, err
	}
	for {
		ch, err := s.getIn(ctx, d, id, raw, c)
		if !errors.Is(err, errNoRoom) {
			return ch, err
		}
		if err := c.wait(ctx); err != nil {
			return Chunk{}, err
		}
	}
}

// getIn is one attempt of get: errNoRoom when c had no room for the chunk
// once its size was known.
func (s *Service) getIn(ctx context.Context, d *domain, id ID, raw bool, c *charge) (Chunk, error) {
	if err := s.acquire(ctx); err != nil {
		return Chunk{}, err
	}
	// A quarantine re-reads and copies for up to a minute: it must not
	// hold a work slot meanwhile, or reads of one corrupt chunk would
	// starve every upload and download.
	release := sync.OnceFunc(s.release)
	defer release()
	corrupt := func(err error) error {
		release()
		return s.corrupt(ctx, id, err)
	}
	rc, info, err := d.store.Get(ctx, id.Key())
	if err != nil {
		return Chunk{}, storeErr(id, err)
	}
	defer rc.Close()
	// The object size is checked before the buffer is allocated.
	if err := checkStoredSize(id, info.Size); err != nil {
		return Chunk{}, corrupt(err)
	}
	need := info.Size
	if raw {
		need = max(need, MaxSize) // what it decodes to is known only then
	}
	if err := c.hold(need); err != nil {
		return Chunk{}, err
	}
	stored := make([]byte, info.Size)
	if _, err := io.ReadFull(rc, stored); err != nil {
		return Chunk{}, fmt.Errorf("chunk %s: read: %w", id, readErr(err))
	}
	ch := Chunk{ID: id, Algorithm: parseAlgorithm(info.Metadata[metaAlgorithm]), Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD, Data: stored}
	ch.Size, _ = strconv.ParseInt(info.Metadata[metaSize], 10, 64)
	s.metrics.bytesServed.Add(float64(len(stored)))
	if d.encrypted {
		// Served as stored whatever raw asks: only the client can decrypt.
		// The CRC is the one check the server can make.
		ch.Encoding = chunkbridgev1.Encoding_ENCODING_DATABLOB
		if err := checkStored(id, stored); err != nil {
			return Chunk{}, corrupt(err)
		}
		return ch, c.hold(int64(len(stored)))
	}
	if !raw && ch.Algorithm != chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED && ch.Size > 0 {
		return ch, nil
	}
	// Raw data was asked for, or the metadata is missing (a chunk placed by
	// casync itself): decode, and learn the algorithm by hashing.
	data, err := s.codec.decode(chunkbridgev1.Encoding_ENCODING_ZSTD, stored)
	if err != nil {
		return Chunk{}, corrupt(fmt.Errorf("chunk %s: %w: stored data does not decode: %v", id, apierr.ErrDigestMismatch, err))
	}
	if err := verify(id, &ch, data); err != nil {
		return Chunk{}, corrupt(err)
	}
	if raw {
		ch.Encoding, ch.Data = chunkbridgev1.Encoding_ENCODING_RAW, data
	}
	return ch, c.hold(int64(len(ch.Data)))
}

// OpenStored opens one chunk as stored (a zstd frame), for a caller that
// passes the stored bytes on as they are and leaves verification to its
// client, as casync's HTTP store does: no metadata is read, nothing is
// decoded or re-verified, and no buffer is filled, so it takes no work
// slot. It returns the store's reader (for the fs store the *os.File, so
// that a copy to a socket can use sendfile) and the stored size, which is
// checked against the largest valid chunk before anything is read; the
// caller reads at most that many bytes and closes the reader.
func (s *Service) OpenStored(ctx context.Context, id ID) (io.ReadCloser, int64, error) {
	d, err := s.storedDomain(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	return s.openStored(ctx, d, id, func() {})
}

// storedDomain makes OpenStored's checks and returns the domain to read.
func (s *Service) storedDomain(ctx context.Context, id ID) (*domain, error) {
	if err := auth.Check(ctx, auth.Read, "chunks"); err != nil {
		return nil, err
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return nil, err
	}
	if d.encrypted {
		// casync's HTTP store is its only caller: it must never get an
		// encrypted chunk in place of a zstd frame.
		return nil, fmt.Errorf("chunk %s: %w: encrypted chunks are served by Get, as DataBlobs, not as casync chunks", id, apierr.ErrInvalid)
	}
	if err := s.mayRead(ctx, d, id); err != nil {
		return nil, err
	}
	return d, nil
}

// openStored opens id in d, checked by storedDomain. release gives back
// the caller's work slot, if it holds one, before a quarantine.
func (s *Service) openStored(ctx context.Context, d *domain, id ID, release func()) (io.ReadCloser, int64, error) {
	rc, size, err := storage.Open(ctx, d.store, id.Key())
	if err != nil {
		return nil, 0, storeErr(id, err)
	}
	if err := checkStoredSize(id, size); err != nil {
		rc.Close()
		release()
		return nil, 0, s.corrupt(ctx, id, err)
	}
	s.metrics.bytesServed.Add(float64(size))
	return rc, size, nil
}

// ReadStored is OpenStored read into memory, for a caller that sends the
// chunk on as one message (ReadChunks): the same checks, no metadata, no
// decoding; it holds a work slot while it fills the buffer.
func (s *Service) ReadStored(ctx context.Context, id ID) ([]byte, error) {
	b, err := s.readStored(ctx, id, nil, nil)
	if err != nil {
		return nil, err
	}
	return *b, nil
}

// readStored is ReadStored charging the buffer to c, and taking it from
// pool when there is one (the caller gives it back).
func (s *Service) readStored(ctx context.Context, id ID, c *charge, pool mem.BufferPool) (*[]byte, error) {
	d, err := s.storedDomain(ctx, id)
	if err != nil {
		return nil, err
	}
	for {
		data, err := s.readStoredIn(ctx, d, id, c, pool)
		if !errors.Is(err, errNoRoom) {
			return data, err
		}
		if err := c.wait(ctx); err != nil {
			return nil, err
		}
	}
}

func (s *Service) readStoredIn(ctx context.Context, d *domain, id ID, c *charge, pool mem.BufferPool) (*[]byte, error) {
	// The slot first, as Get: a read waiting for one holds no object open.
	if err := s.acquire(ctx); err != nil {
		return nil, err
	}
	release := sync.OnceFunc(s.release)
	defer release()
	rc, size, err := s.openStored(ctx, d, id, release)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if err := c.hold(size); err != nil {
		return nil, err
	}
	var stored *[]byte
	if pool != nil {
		stored = pool.Get(int(size))
	} else {
		b := make([]byte, size)
		stored = &b
	}
	if _, err := io.ReadFull(rc, *stored); err != nil {
		if pool != nil {
			pool.Put(stored)
		}
		return nil, fmt.Errorf("chunk %s: read: %w", id, readErr(err))
	}
	return stored, nil
}

// verify checks data against id with the recorded algorithm, or finds the
// algorithm when none is recorded.
func verify(id ID, c *Chunk, data []byte) error {
	c.Size = int64(len(data))
	algs := []chunkbridgev1.DigestAlgorithm{c.Algorithm}
	if c.Algorithm == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED {
		algs = []chunkbridgev1.DigestAlgorithm{chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256}
	}
	for _, alg := range algs {
		if sum, _ := digest(alg, data); sum == id {
			c.Algorithm = alg
			return nil
		}
	}
	return fmt.Errorf("chunk %s: %w: stored data no longer hashes to its id", id, apierr.ErrDigestMismatch)
}

// storeErr names the chunk; a missing chunk needs no more words.
func storeErr(id ID, err error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("chunk %s: %w", id, apierr.ErrNotFound)
	}
	return fmt.Errorf("chunk %s: %w", id, err)
}

// readErr keeps a truncated object from looking like a clean end of file.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: object shorter than its listed size: %w", storage.ErrUnavailable, err)
	}
	return err
}

// Stat describes a stored chunk.
func (s *Service) Stat(ctx context.Context, id ID) (*chunkbridgev1.ChunkInfo, error) {
	if err := auth.Check(ctx, auth.Read, "chunks"); err != nil {
		return nil, err
	}
	d, err := s.domains.of(ctx, false)
	if err != nil {
		return nil, err
	}
	gen := s.presence.generation()
	info, err := d.store.Stat(ctx, id.Key())
	if err != nil {
		return nil, storeErr(id, err)
	}
	alg := parseAlgorithm(info.Metadata[metaAlgorithm])
	size, _ := strconv.ParseInt(info.Metadata[metaSize], 10, 64)
	if !d.encrypted && (alg == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED || size <= 0) {
		c, err := s.Get(ctx, id, false)
		if err != nil {
			return nil, err
		}
		alg, size = c.Algorithm, c.Size
	}
	s.presence.add(pkey{d.num, id}, size, gen)
	return &chunkbridgev1.ChunkInfo{Id: id.String(), Algorithm: alg, Size: size, StoredSize: info.Size, Encrypted: d.encrypted}, nil
}

// Counters are what this process has done since it started.
type Counters struct {
	Written, Deduplicated, BytesReceived int64
}

// Counters reports the upload counters.
func (s *Service) Counters() Counters {
	return Counters{Written: s.written.Load(), Deduplicated: s.deduplicated.Load(), BytesReceived: s.received.Load()}
}

// Forget drops id, in every domain, from the presence cache; garbage collection calls it
// before deleting a chunk, and again once it is deleted. An existence
// answer storage gave before a Forget is never cached after it (see
// presence), so after the second Forget the cache cannot claim the chunk.
func (s *Service) Forget(id ID) { s.presence.forget(id) }

// ForgetAll empties the presence cache, with the same guarantee as Forget
// for every chunk. A replica calls it when garbage collection ran in
// another process, whose Forget calls it never saw.
func (s *Service) ForgetAll() { s.presence.forgetAll() }

// maxStored bounds a stored object: the largest chunk, compressed, with
// room for zstd's worst case.
const maxStored = MaxSize + MaxSize/8

// checkStoredSize refuses an object larger than any valid chunk before
// anything is read or allocated for it.
func checkStoredSize(id ID, size int64) error {
	if size > maxStored {
		return fmt.Errorf("chunk %s: %w: stored object is %d bytes, more than any valid chunk", id, apierr.ErrDigestMismatch, size)
	}
	return nil
}
