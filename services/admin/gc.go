package admin

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/storage"
)

// gcProgress is the running collection's counters.
type gcProgress struct {
	phase                                   atomic.Value // string
	started, cutoff                         time.Time
	dryRun                                  bool
	indexFiles, referenced                  atomic.Int64
	scanned, scannedBytes                   atomic.Int64
	deleted, deletedBytes                   atomic.Int64
	keptReferenced, keptRecent, keptProtect atomic.Int64
	keptBytes                               atomic.Int64
	prefixesDone                            atomic.Int32
	prefixesTotal                           atomic.Int32
}

func (p *gcProgress) report(missing int64, took time.Duration) *chunkbridgev1.GCReport {
	return &chunkbridgev1.GCReport{
		Started:           timestamppb.New(p.started),
		Cutoff:            timestamppb.New(p.cutoff),
		Duration:          durationpb.New(took),
		DryRun:            p.dryRun,
		IndexFiles:        p.indexFiles.Load(),
		ReferencedChunks:  p.referenced.Load(),
		ChunksScanned:     p.scanned.Load(),
		BytesScanned:      p.scannedBytes.Load(),
		ChunksKept:        p.keptReferenced.Load() + p.keptRecent.Load() + p.keptProtect.Load(),
		BytesKept:         p.keptBytes.Load(),
		ChunksDeleted:     p.deleted.Load(),
		BytesDeleted:      p.deletedBytes.Load(),
		ChunksReferenced:  p.keptReferenced.Load(),
		ChunksRecent:      p.keptRecent.Load(),
		ChunksProtected:   p.keptProtect.Load(),
		ReferencedMissing: missing,
	}
}

// RunGC marks and sweeps; see the proto and the README for the safety
// argument.
func (s *Server) RunGC(ctx context.Context, req *chunkbridgev1.RunGCRequest) (*chunkbridgev1.RunGCResponse, error) {
	grace := s.cfg.DefaultGrace
	if req.GetGrace() != nil {
		if err := req.GetGrace().CheckValid(); err != nil {
			return nil, apierr.Status(fmt.Errorf("%w: grace: %v", apierr.ErrInvalid, err))
		}
		grace = req.GetGrace().AsDuration()
		if grace < 0 {
			return nil, apierr.Status(fmt.Errorf("%w: grace %s is negative", apierr.ErrInvalid, grace))
		}
	}
	report, err := s.collect(ctx, grace, req.GetDryRun())
	if err != nil {
		return nil, apierr.Status(err)
	}
	return &chunkbridgev1.RunGCResponse{Report: report}, nil
}

// GetGCStatus reports the running collection and the last finished one
// of this replica; a collection running on another replica is reported by
// the replica's name, from the store's GC state.
func (s *Server) GetGCStatus(ctx context.Context, _ *chunkbridgev1.GetGCStatusRequest) (*chunkbridgev1.GetGCStatusResponse, error) {
	s.gcMu.Lock()
	resp := &chunkbridgev1.GetGCStatusResponse{Last: s.lastGC}
	if p := s.gcStatus; p != nil {
		resp.Running = true
		resp.Phase, _ = p.phase.Load().(string)
		resp.Progress = p.report(0, time.Since(p.started))
		resp.PrefixesDone = p.prefixesDone.Load()
		resp.PrefixesTotal = p.prefixesTotal.Load()
	}
	s.gcMu.Unlock()
	if resp.Running {
		return resp, nil
	}
	guard := s.catalog.Guard()
	st, err := guard.State(ctx)
	if err != nil {
		return nil, apierr.Status(err)
	}
	if st.Phase != gcguard.Idle && st.Holder != guard.Replica() {
		resp.Running = true
		resp.Phase = fmt.Sprintf("running on replica %s (run %s), as the store says; that replica's status has its progress", st.Holder, st.Run)
	}
	return resp, nil
}

// collect is one garbage collection.
func (s *Server) collect(ctx context.Context, grace time.Duration, dryRun bool) (*chunkbridgev1.GCReport, error) {
	run, err := s.catalog.Guard().Begin(ctx)
	if errors.Is(err, gcguard.ErrRunning) {
		return nil, fmt.Errorf("%w: %v", apierr.ErrBusy, err)
	}
	if err != nil {
		s.metrics.gcRuns.WithLabelValues("error").Inc()
		return nil, fmt.Errorf("garbage collection: %w", err)
	}
	defer run.End(context.WithoutCancel(ctx))
	began := time.Now()
	s.metrics.gcRunning.Set(1)
	defer s.metrics.gcRunning.Set(0)

	// Everything published before Begin is visible to the mark below;
	// everything committed from now on is registered (see gcguard). The
	// cutoff is on the store's clock, the clock of every chunk's
	// modification time: a skewed server clock cannot make a new chunk
	// look old.
	start := run.Start()
	p := &gcProgress{started: start, cutoff: start.Add(-grace), dryRun: dryRun}
	p.phase.Store("mark")
	s.gcMu.Lock()
	s.gcStatus = p
	s.gcMu.Unlock()
	defer func() {
		s.gcMu.Lock()
		s.gcStatus = nil
		s.gcMu.Unlock()
	}()
	log := s.log.With("gc_run", run.ID(), "gc_started", start, "cutoff", p.cutoff, "dry_run", dryRun)
	log.Info("garbage collection started", "grace", grace)

	report, err := s.markAndSweep(ctx, run, p)
	took := time.Since(began)
	if err != nil {
		s.metrics.gcRuns.WithLabelValues("error").Inc()
		log.Error("garbage collection failed", "err", err, "deleted", p.deleted.Load(), "duration", took)
		return nil, fmt.Errorf("garbage collection: %w (deleted %d chunks before stopping)", err, p.deleted.Load())
	}
	report.Duration = durationpb.New(took)
	s.metrics.gcRuns.WithLabelValues("ok").Inc()
	s.metrics.gcLastSuccess.SetToCurrentTime()
	s.metrics.gcLastDuration.Set(took.Seconds())
	if !dryRun {
		s.metrics.gcDeleted.Add(float64(report.ChunksDeleted))
		s.metrics.gcDeletedBytes.Add(float64(report.BytesDeleted))
		s.stats.invalidate()
	}
	s.gcMu.Lock()
	s.lastGC = report
	s.gcMu.Unlock()
	log.Info("garbage collection finished", "index_files", report.IndexFiles, "referenced", report.ReferencedChunks,
		"scanned", report.ChunksScanned, "deleted", report.ChunksDeleted, "deleted_bytes", report.BytesDeleted,
		"recent", report.ChunksRecent, "protected", report.ChunksProtected, "missing", report.ReferencedMissing, "duration", took)
	return report, nil
}

func (s *Server) markAndSweep(ctx context.Context, run *gcguard.Run, p *gcProgress) (*chunkbridgev1.GCReport, error) {
	refs := newRefSet()
	// One set for both spaces: a chunk is kept when any file references
	// its id, plain or encrypted (the sweep goes over both).
	files, err := s.mark(ctx, refs, nil, nil, func(r catalog.Referrer, err error) error {
		if errors.Is(err, apierr.ErrInvalid) { // stored, so not the caller's fault
			err = fmt.Errorf("%w: %v", apierr.ErrCorrupt, err)
		}
		return fmt.Errorf("mark: %s cannot be read, so the chunks it references are unknown; nothing was deleted: %w", r.Name, err)
	}, func() { p.indexFiles.Add(1) })
	if err != nil {
		return nil, err
	}
	p.indexFiles.Store(files)
	p.referenced.Store(refs.len())
	if h := s.cfg.Hooks.AfterMark; h != nil {
		h()
	}
	p.phase.Store("sweep")
	if err := s.sweep(ctx, run, refs, p); err != nil {
		return nil, err
	}
	var missing int64
	refs.unseen(func(chunk.ID) { missing++ })
	return p.report(missing, 0), nil
}

type candidate struct {
	id   chunk.ID
	size int64
}

// sweep lists the chunk prefixes of every dedup domain in parallel and
// deletes, in batches, the unreferenced chunks older than the cutoff. A
// chunk is kept when any tenant's file references its id, whatever the
// tenant's domain: a credentials file that moved a tenant can then never
// cost it its chunks, only leave some garbage (docs/tenants.md).
func (s *Server) sweep(ctx context.Context, run *gcguard.Run, refs *refSet, p *gcProgress) error {
	bindings, err := chunk.Bindings(ctx, s.store)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	domains := s.domains(bindings)
	p.prefixesTotal.Store(int32(len(domains) * len(s.prefixes.keys)))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.cfg.Workers)
	for _, sp := range domains {
		for _, prefix := range s.prefixes.keys {
			g.Go(func() error { return s.sweepPrefix(gctx, run, refs, p, sp.st, prefix) })
		}
	}
	return g.Wait()
}

// sweepPrefix sweeps one listing prefix of one domain's chunk space st.
func (s *Server) sweepPrefix(ctx context.Context, run *gcguard.Run, refs *refSet, p *gcProgress, st storage.Store, prefix string) error {
	var batch []candidate
	err := st.List(ctx, prefix, func(i storage.Info) error {
		id, ok := chunkID(i.Key)
		if !ok {
			return nil // not a chunk this service wrote: never touched
		}
		p.scanned.Add(1)
		p.scannedBytes.Add(i.Size)
		switch {
		case refs.see(id):
			p.keptReferenced.Add(1)
			p.keptBytes.Add(i.Size)
		case !i.Modified.Before(p.cutoff):
			p.keptRecent.Add(1)
			p.keptBytes.Add(i.Size)
		default:
			batch = append(batch, candidate{id, i.Size})
			if len(batch) == s.cfg.DeleteBatch {
				err := s.deleteBatch(ctx, run, st, batch, p)
				batch = batch[:0]
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = s.deleteBatch(ctx, run, st, batch, p)
	}
	p.prefixesDone.Add(1)
	return err
}

// deleteBatch deletes the candidates that no commit registered since the
// mark, holding off commits while it decides and deletes. Each chunk is
// forgotten by the chunk service's presence cache before and after.
func (s *Server) deleteBatch(ctx context.Context, run *gcguard.Run, st storage.Store, batch []candidate, p *gcProgress) error {
	if len(batch) == 0 {
		return nil
	}
	decide := func(protected func(chunk.ID) bool) (doomed []candidate) {
		for _, c := range batch {
			if protected(c.id) {
				p.keptProtect.Add(1)
				p.keptBytes.Add(c.size)
				continue
			}
			doomed = append(doomed, c)
		}
		return doomed
	}
	count := func(doomed []candidate) {
		for _, c := range doomed {
			p.deleted.Add(1)
			p.deletedBytes.Add(c.size)
		}
	}
	if p.dryRun {
		return run.Check(ctx, func(protected func(chunk.ID) bool) { count(decide(protected)) })
	}
	return run.Delete(ctx, func(ctx context.Context, protected func(chunk.ID) bool) error {
		doomed := decide(protected)
		ids := make([]chunk.ID, len(doomed))
		keys := make([]string, len(doomed))
		for i, c := range doomed {
			ids[i], keys[i] = c.id, c.id.Key()
			s.chunks.Forget(c.id)
		}
		if h := s.cfg.Hooks.InDeleteBatch; h != nil {
			h(ids)
		}
		err := storage.DeleteBatch(ctx, st, keys)
		for _, id := range ids {
			s.chunks.Forget(id)
		}
		if err != nil {
			return fmt.Errorf("delete %d chunks: %w", len(keys), err)
		}
		count(doomed)
		return nil
	})
}
