package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

const (
	// maxProblems bounds the problems a report lists; counts stay exact.
	maxProblems = 10_000
	// maxReferencedBy bounds the files named per problem.
	maxReferencedBy = 100
	// unavailableStreak chunks in a row that storage cannot serve stop the
	// run: an outage, reported with where to resume.
	unavailableStreak = 20
	// unavailableRetries more attempts are made on a chunk storage could
	// not serve, after RetryBackoff (250 ms) and four times that.
	unavailableRetries = 2
)

type Problem = chunkbridgev1.Problem

// verifyRun is one verification.
type verifyRun struct {
	s        *Server
	sample   float64
	limit    *limiter
	resume   *chunk.ID
	deadline time.Time
	// The domain being verified (in name order), its chunk space and the
	// chunks its tenants' files reference; resumeDomain is where resume is.
	dom, resumeDomain string
	st                storage.Store
	refs              *refSet
	// encrypted: st and refs are the domain's encrypted space and the
	// chunks its encrypted files reference (encRefs, until walked).
	encrypted bool
	encRefs   *refSet
	domains   int

	listed, verified, bytesRead, logicalRead, quarantined atomic.Int64
	prefixesDone                                          atomic.Int32
	streak                                                atomic.Int64
	stopped                                               atomic.Bool

	mu         sync.Mutex
	problems   []*Problem
	counts     map[chunkbridgev1.Problem_Kind]int64
	damaged    map[string]bool // files that reference a damaged chunk, or do not parse
	lastID     string
	stopReason string
}

// Verify reads chunks back and checks references; see the proto.
func (s *Server) Verify(req *chunkbridgev1.VerifyRequest, stream grpc.ServerStreamingServer[chunkbridgev1.VerifyResponse]) error {
	ctx := stream.Context()
	v, err := s.newVerifyRun(req)
	if err != nil {
		return apierr.Status(err)
	}
	started := time.Now()
	s.log.Info("verification started", "sample", v.sample, "rate_limit", req.GetRateLimit(), "resume_after", req.GetResumeAfter())

	var sendMu sync.Mutex
	send := func(r *chunkbridgev1.VerifyResponse) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(r)
	}
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if send(&chunkbridgev1.VerifyResponse{Result: &chunkbridgev1.VerifyResponse_Progress{Progress: v.progress()}}) != nil {
					return
				}
			}
		}
	}()
	report, err := v.run(ctx)
	close(stopProgress)
	<-progressDone
	if err != nil {
		s.log.Warn("verification failed", "err", err)
		return apierr.Status(err)
	}
	report.Started = timestamppb.New(started)
	report.Duration = durationpb.New(time.Since(started))
	s.log.Info("verification finished", "verified", report.ChunksVerified, "bytes", report.BytesRead,
		"corrupt", report.Corrupt, "missing", report.Missing, "unreadable", report.Unreadable,
		"unavailable", report.Unavailable, "indexes_corrupt", report.IndexesCorrupt, "complete", report.Complete, "last_id", report.LastId)
	return send(&chunkbridgev1.VerifyResponse{Result: &chunkbridgev1.VerifyResponse_Report{Report: report}})
}

func (s *Server) newVerifyRun(req *chunkbridgev1.VerifyRequest) (*verifyRun, error) {
	v := &verifyRun{s: s, sample: req.GetSample(), refs: newRefSet(), counts: map[chunkbridgev1.Problem_Kind]int64{}, damaged: map[string]bool{},
		resumeDomain: req.GetResumeDomain(), domains: 1}
	if v.resumeDomain == "" && req.GetResumeAfter() != "" {
		v.resumeDomain = auth.DefaultDomain // from before domains existed
	}
	if math.IsNaN(v.sample) || v.sample < 0 || v.sample > 1 {
		return nil, fmt.Errorf("%w: sample %v: want a fraction in (0, 1], or 0 for all", apierr.ErrInvalid, req.GetSample())
	}
	if v.sample == 0 {
		v.sample = 1
	}
	switch r := req.GetRateLimit(); {
	case r < 0:
		return nil, fmt.Errorf("%w: rate limit %d bytes/s is negative", apierr.ErrInvalid, r)
	case r > 0:
		v.limit = &limiter{rate: float64(r)}
	}
	if ra := req.GetResumeAfter(); ra != "" {
		id, err := chunk.ParseID(ra)
		if err != nil {
			return nil, fmt.Errorf("resume after: %w", err)
		}
		v.resume = &id
		v.lastID = id.String()
	}
	if d := req.GetMaxDuration(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
			return nil, fmt.Errorf("%w: max duration %v: want a positive duration", apierr.ErrInvalid, d.AsDuration())
		}
		v.deadline = time.Now().Add(d.AsDuration())
	}
	return v, nil
}

func (v *verifyRun) progress() *chunkbridgev1.VerifyProgress {
	v.mu.Lock()
	defer v.mu.Unlock()
	var n int64
	for _, c := range v.counts {
		n += c
	}
	return &chunkbridgev1.VerifyProgress{
		ChunksListed: v.listed.Load(), ChunksVerified: v.verified.Load(), BytesRead: v.bytesRead.Load(),
		Problems: n, LastId: v.lastID, PrefixesDone: v.prefixesDone.Load(), PrefixesTotal: int32(2 * v.domains * len(v.s.prefixes.keys)),
		Domain: v.dom,
	}
}

func kindLabel(k chunkbridgev1.Problem_Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
}

func (v *verifyRun) problem(p *Problem) {
	v.s.metrics.verifyProblems.WithLabelValues(kindLabel(p.Kind)).Inc()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.counts[p.Kind]++
	if p.Kind == chunkbridgev1.Problem_KIND_INDEX_CORRUPT {
		v.damageLocked(p.Index)
	}
	if len(v.problems) < maxProblems {
		v.problems = append(v.problems, p)
	}
}

// damageLocked records a file that cannot be restored whole; v.mu held.
func (v *verifyRun) damageLocked(name string) {
	if len(v.damaged) < maxProblems {
		v.damaged[name] = true
	}
}

// damages reports whether a problem of kind makes the files that
// reference the chunk unrestorable (an outage does not).
func damages(kind chunkbridgev1.Problem_Kind) bool {
	switch kind {
	case chunkbridgev1.Problem_KIND_CORRUPT, chunkbridgev1.Problem_KIND_MISSING, chunkbridgev1.Problem_KIND_UNREADABLE:
		return true
	}
	return false
}

func (v *verifyRun) chunkProblem(kind chunkbridgev1.Problem_Kind, id chunk.ID, err error) *Problem {
	return &Problem{Kind: kind, Id: id.String(), Message: err.Error(), Code: apierr.Code(err).String(), DedupDomain: v.dom}
}

func (v *verifyRun) stop(reason string) {
	v.mu.Lock()
	if v.stopReason == "" {
		v.stopReason = reason
	}
	v.mu.Unlock()
	v.stopped.Store(true)
}

// shouldStop reports whether to dispatch no more work.
func (v *verifyRun) shouldStop() bool {
	if !v.deadline.IsZero() && time.Now().After(v.deadline) {
		v.stop("max_duration reached")
	}
	return v.stopped.Load()
}

func (v *verifyRun) run(ctx context.Context) (*chunkbridgev1.VerifyReport, error) {
	bindings, err := chunk.Bindings(ctx, v.s.store)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	names := domainNames(bindings)
	if v.resumeDomain != "" && !slices.Contains(names, v.resumeDomain) {
		return nil, fmt.Errorf("%w: resume domain %q: no tenant is bound to it (domains: %s)", apierr.ErrInvalid, v.resumeDomain, strings.Join(names, ", "))
	}
	v.mu.Lock()
	v.domains = len(names)
	v.mu.Unlock()
	var files, referenced int64
	complete := true
	for _, d := range names {
		if d < v.resumeDomain {
			v.prefixesDone.Add(int32(2 * len(v.s.prefixes.keys)))
			continue
		}
		if d != v.resumeDomain && v.resume != nil {
			v.mu.Lock()
			v.resume, v.lastID = nil, ""
			v.mu.Unlock()
		}
		v.mu.Lock()
		v.dom, v.st, v.refs, v.encrypted, v.encRefs = d, v.s.chunks.DomainStore(d), newRefSet(), false, newRefSet()
		v.mu.Unlock()
		plainRefs, encRefs := v.refs, v.encRefs
		n, done, err := v.runDomain(chunk.InDomain(ctx, d), func(r catalog.Referrer) bool { return domainOf(bindings, r.Tenant) == d })
		if err != nil {
			return nil, err
		}
		files += n
		referenced += plainRefs.len() + encRefs.len()
		if !done {
			complete = false
			break
		}
	}
	v.resolveReferrers(ctx, bindings)

	v.mu.Lock()
	defer v.mu.Unlock()
	damaged := make([]string, 0, len(v.damaged))
	for f := range v.damaged {
		damaged = append(damaged, f)
	}
	slices.Sort(damaged)
	slices.SortFunc(v.problems, func(a, b *Problem) int {
		if c := strings.Compare(a.DedupDomain, b.DedupDomain); c != 0 {
			return c
		}
		if c := strings.Compare(a.Id, b.Id); c != 0 {
			return c
		}
		return strings.Compare(a.Index, b.Index)
	})
	r := &chunkbridgev1.VerifyReport{
		Sample:           v.sample,
		IndexFiles:       files,
		ReferencedChunks: referenced,
		ChunksListed:     v.listed.Load(),
		ChunksVerified:   v.verified.Load(),
		BytesRead:        v.bytesRead.Load(),
		LogicalBytesRead: v.logicalRead.Load(),
		Corrupt:          v.counts[chunkbridgev1.Problem_KIND_CORRUPT],
		Missing:          v.counts[chunkbridgev1.Problem_KIND_MISSING],
		Unreadable:       v.counts[chunkbridgev1.Problem_KIND_UNREADABLE],
		Unavailable:      v.counts[chunkbridgev1.Problem_KIND_UNAVAILABLE],
		IndexesCorrupt:   v.counts[chunkbridgev1.Problem_KIND_INDEX_CORRUPT],
		Problems:         v.problems,
		LastId:           v.lastID,
		LastDomain:       v.dom,
		Complete:         complete,
		StoppedReason:    v.stopReason,
		Quarantined:      v.quarantined.Load(),
		DamagedFiles:     damaged,
	}
	return r, nil
}

// domainOf is the dedup domain of a tenant's files; a tenant without a
// binding (which a commit writes first) is looked for in the default one.
func domainOf(bindings map[string]string, tenant string) string {
	if d, ok := bindings[tenant]; ok {
		return d
	}
	return auth.DefaultDomain
}

// runDomain verifies the current domain: marks the files only selects,
// walks the chunk space, and checks the referenced chunks it did not see.
// It reports the files read and whether the whole domain was covered.
func (v *verifyRun) runDomain(ctx context.Context, only func(catalog.Referrer) bool) (int64, bool, error) {
	files, err := v.s.mark(ctx, v.refs, v.encRefs, only, func(r catalog.Referrer, err error) error {
		kind := chunkbridgev1.Problem_KIND_UNREADABLE
		switch {
		case errors.Is(err, apierr.ErrInvalid):
			kind = chunkbridgev1.Problem_KIND_INDEX_CORRUPT
		case errors.Is(err, storage.ErrUnavailable):
			kind = chunkbridgev1.Problem_KIND_UNAVAILABLE
		}
		v.problem(&Problem{Kind: kind, Index: r.Name, Message: err.Error(), Code: apierr.Code(err).String()})
		return nil
	}, nil)
	if err != nil {
		return 0, false, err
	}
	through, complete, err := v.walk(ctx)
	if err != nil {
		return 0, false, err
	}
	if err := v.checkMissing(ctx, through); err != nil {
		return 0, false, err
	}
	if !complete {
		return files, false, nil
	}
	// The encrypted space, once the plain one is done, is walked whole:
	// resume points are the plain space's. Each object's DataBlob CRC is
	// checked (its id cannot be), and the encrypted files' chunks are
	// looked for there only.
	v.mu.Lock()
	v.st, v.refs, v.encrypted, v.resume = v.s.chunks.EncryptedStore(v.dom), v.encRefs, true, nil
	v.mu.Unlock()
	ectx := chunk.Encrypted(ctx)
	through, complete, err = v.walk(ectx)
	if err != nil {
		return 0, false, err
	}
	if err := v.checkMissing(ectx, through); err != nil {
		return 0, false, err
	}
	if !complete {
		// A resume point in the encrypted space means nothing to the
		// plain walk a resumed run starts with: it starts the domain over.
		v.mu.Lock()
		v.lastID = ""
		v.mu.Unlock()
	}
	return files, complete, nil
}

type listedChunk struct {
	id   chunk.ID
	size int64
}

type chunkPage struct {
	prefix  int
	entries []listedChunk
	err     error
}

// walk lists the prefixes in id order (listing runs ahead of reading) and
// reads the sampled chunks back, VerifyWorkers at a time, without waiting
// at prefix boundaries. It returns the highest id up to which every chunk
// was handled, and whether the whole range was covered.
func (v *verifyRun) walk(ctx context.Context) (chunk.ID, bool, error) {
	first := 0
	tr := &tracker{v: v, pending: map[int64]trackedItem{}}
	if v.resume != nil {
		first = v.s.prefixes.of(*v.resume)
		tr.through = *v.resume
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan chunkPage, 2)
	go func() {
		defer close(pages)
		for p := first; p < len(v.s.prefixes.keys); p++ {
			var pg = chunkPage{prefix: p}
			pg.err = v.st.List(lctx, v.s.prefixes.keys[p], func(i storage.Info) error {
				id, ok := chunkID(i.Key)
				if ok && (v.resume == nil || bytes.Compare(id[:], v.resume[:]) > 0) {
					pg.entries = append(pg.entries, listedChunk{id, i.Size})
				}
				return nil
			})
			select {
			case pages <- pg:
			case <-lctx.Done():
				return
			}
			if pg.err != nil {
				return
			}
		}
	}()

	sem := make(chan struct{}, v.s.cfg.VerifyWorkers)
	var (
		wg     sync.WaitGroup
		errMu  sync.Mutex
		runErr error
		seq    int64
	)
	fail := func(err error) {
		errMu.Lock()
		if runErr == nil {
			runErr = err
		}
		errMu.Unlock()
		v.stopped.Store(true)
	}
pages:
	for pg := range pages {
		if pg.err != nil {
			if ctx.Err() != nil {
				fail(ctx.Err())
			} else if errors.Is(pg.err, storage.ErrUnavailable) {
				v.stop(fmt.Sprintf("listing %s: %v", v.s.prefixes.keys[pg.prefix], pg.err))
			} else {
				fail(pg.err)
			}
			break
		}
		v.listed.Add(int64(len(pg.entries)))
		for _, e := range pg.entries {
			v.refs.see(e.id)
		}
		for _, e := range pg.entries {
			if v.shouldStop() {
				break pages
			}
			n := seq
			seq++
			if v.sample < 1 && rand.Float64() >= v.sample {
				tr.finish(n, trackedItem{id: e.id, prefixEnd: -1})
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				fail(ctx.Err())
				break pages
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := v.check(ctx, e); err != nil {
					fail(err)
					return
				}
				tr.finish(n, trackedItem{id: e.id, prefixEnd: -1})
			}()
		}
		// The end of the prefix counts once everything before it is done.
		tr.finish(seq, trackedItem{prefixEnd: pg.prefix})
		seq++
	}
	wg.Wait()
	if runErr != nil {
		return tr.through, false, runErr
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.through, tr.reachedEnd && !v.stopped.Load(), nil
}

// trackedItem is a chunk, or the end of a prefix (prefixEnd ≥ 0).
type trackedItem struct {
	id        chunk.ID
	prefixEnd int
}

// tracker turns completions in any order into the highest point up to
// which everything is done: the resume point.
type tracker struct {
	v          *verifyRun
	mu         sync.Mutex
	next       int64
	pending    map[int64]trackedItem
	through    chunk.ID
	reachedEnd bool
}

func (tr *tracker) finish(seq int64, it trackedItem) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.pending[seq] = it
	for {
		it, ok := tr.pending[tr.next]
		if !ok {
			return
		}
		delete(tr.pending, tr.next)
		tr.next++
		if it.prefixEnd < 0 {
			tr.through = it.id
			tr.v.mu.Lock()
			tr.v.lastID = it.id.String()
			tr.v.mu.Unlock()
			continue
		}
		tr.through = tr.v.s.prefixes.last(it.prefixEnd)
		tr.v.prefixesDone.Add(1)
		if it.prefixEnd == len(tr.v.s.prefixes.keys)-1 {
			tr.reachedEnd = true
		}
	}
}

// check reads one chunk back: chunk.Service.Get with raw=true decodes it
// and re-hashes it with its recorded algorithm.
func (v *verifyRun) check(ctx context.Context, e listedChunk) error {
	if err := v.limit.wait(ctx, e.size); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		c, err := v.s.chunks.Get(ctx, e.id, true)
		switch {
		case err == nil:
			v.verified.Add(1)
			v.bytesRead.Add(e.size)
			v.logicalRead.Add(c.Size)
			v.s.metrics.verifyChunks.Inc()
			v.s.metrics.verifyBytes.Add(float64(e.size))
			v.streak.Store(0)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, apierr.ErrNotFound):
			// Deleted since it was listed (garbage collection): not a problem.
			v.streak.Store(0)
		case errors.Is(err, apierr.ErrDigestMismatch):
			// Get moved it to quarantine (or says why it could not).
			v.verified.Add(1)
			v.bytesRead.Add(e.size)
			v.s.metrics.verifyChunks.Inc()
			p := v.chunkProblem(chunkbridgev1.Problem_KIND_CORRUPT, e.id, err)
			if q := (*chunk.QuarantinedError)(nil); errors.As(err, &q) && q.Key != "" {
				p.Quarantine = q.Key
				v.quarantined.Add(1)
			}
			v.problem(p)
			v.streak.Store(0)
		case errors.Is(err, storage.ErrUnavailable):
			if attempt < unavailableRetries {
				select {
				case <-time.After(v.s.cfg.RetryBackoff << (2 * attempt)):
					continue
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			// Never evidence of damage: reported as unavailable.
			v.problem(v.chunkProblem(chunkbridgev1.Problem_KIND_UNAVAILABLE, e.id, err))
			if v.streak.Add(1) >= unavailableStreak {
				v.stop(fmt.Sprintf("storage unavailable: %d chunks in a row could not be read; resume later", unavailableStreak))
			}
		default:
			v.problem(v.chunkProblem(chunkbridgev1.Problem_KIND_UNREADABLE, e.id, err))
			v.streak.Store(0)
		}
		return nil
	}
}

// checkMissing reports the referenced chunks the listing did not see
// within the covered range, after confirming each with a Stat (a chunk may
// have been written since it was listed).
func (v *verifyRun) checkMissing(ctx context.Context, through chunk.ID) error {
	var ids []chunk.ID
	v.refs.unseen(func(id chunk.ID) {
		if (v.resume == nil || bytes.Compare(id[:], v.resume[:]) > 0) && bytes.Compare(id[:], through[:]) <= 0 {
			ids = append(ids, id)
		}
	})
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.s.cfg.Workers)
	for _, id := range ids {
		g.Go(func() error {
			_, err := v.st.Stat(gctx, id.Key())
			switch {
			case err == nil:
			case gctx.Err() != nil:
				return gctx.Err()
			case errors.Is(err, storage.ErrNotFound):
				// No "stored" from before may survive: a client would
				// skip uploading it again, and so would a repair.
				v.s.chunks.Forget(id)
				p := &Problem{Kind: chunkbridgev1.Problem_KIND_MISSING, Id: id.String(), Code: codes.NotFound.String(), DedupDomain: v.dom,
					Message: fmt.Sprintf("chunk %s is referenced but not in the store: upload it again (a backup of the same data, or chunkbridge verify --repair-from)", id)}
				v.quarantineOf(gctx, id, p)
				v.problem(p)
			case errors.Is(err, storage.ErrUnavailable):
				v.problem(v.chunkProblem(chunkbridgev1.Problem_KIND_UNAVAILABLE, id, fmt.Errorf("check that chunk %s exists: %w", id, err)))
			default:
				v.problem(v.chunkProblem(chunkbridgev1.Problem_KIND_UNREADABLE, id, fmt.Errorf("check that chunk %s exists: %w", id, err)))
			}
			return nil
		})
	}
	return g.Wait()
}

// quarantineOf names, in a missing chunk's problem, a quarantined copy of
// it and why it was quarantined, if it has one; a failed look only leaves
// the problem as it is. A problem past the report's limit is only counted:
// it is not looked up.
func (v *verifyRun) quarantineOf(ctx context.Context, id chunk.ID, p *Problem) {
	v.mu.Lock()
	full := len(v.problems) >= maxProblems
	v.mu.Unlock()
	if full {
		return
	}
	var key string
	if err := v.st.List(ctx, chunk.QuarantinedPrefix(id), func(i storage.Info) error { key = i.Key; return nil }); err != nil || key == "" {
		return
	}
	p.Quarantine = chunk.DomainPrefix(v.dom) + key // its name in the store
	if v.encrypted {
		p.Quarantine = chunk.DomainPrefix(v.dom) + chunk.EncryptedPrefix + key
	}
	p.Message = fmt.Sprintf("chunk %s is referenced but not in the store: it was moved to quarantine as %s", id, p.Quarantine)
	if info, err := v.st.Stat(ctx, key); err == nil && info.Metadata["reason"] != "" {
		p.Message += fmt.Sprintf(" at %s (%s)", info.Metadata["quarantined"], info.Metadata["reason"])
	}
	p.Message += "; upload it again (a backup of the same data, or chunkbridge verify --repair-from)"
}

// resolveReferrers reads the published files again to name, for each
// chunk with a problem, the files that reference it. A missing chunk that
// nothing references any more (its index was deleted and the chunk
// collected meanwhile) is no problem and is dropped.
func (v *verifyRun) resolveReferrers(ctx context.Context, bindings map[string]string) {
	type domainID struct {
		dom string
		id  chunk.ID
	}
	v.mu.Lock()
	byID := map[domainID][]*Problem{}
	for _, p := range v.problems {
		if id, err := chunk.ParseID(p.Id); err == nil {
			k := domainID{p.DedupDomain, id}
			byID[k] = append(byID[k], p)
		}
	}
	v.mu.Unlock()
	if len(byID) == 0 {
		return
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(v.s.cfg.MarkWorkers)
	err := v.s.catalog.ListReferrers(gctx, func(r catalog.Referrer) error {
		g.Go(func() error {
			seen := map[chunk.ID]bool{}
			dom := domainOf(bindings, r.Tenant)
			err := v.s.catalog.ScanReferrer(gctx, r, func(id chunk.ID) error {
				if ps, ok := byID[domainID{dom, id}]; ok && !seen[id] {
					seen[id] = true
					mu.Lock()
					for _, p := range ps {
						if len(p.ReferencedBy) < maxReferencedBy {
							p.ReferencedBy = append(p.ReferencedBy, r.Name)
						}
						if damages(p.Kind) {
							v.mu.Lock()
							v.damageLocked(r.Name)
							v.mu.Unlock()
						}
					}
					mu.Unlock()
				}
				return nil
			})
			if err != nil && gctx.Err() == nil && !errors.Is(err, apierr.ErrNotFound) {
				v.s.log.Warn("verification: naming the files that reference damaged chunks", "file", r.Name, "err", err)
			}
			return nil
		})
		return gctx.Err()
	})
	g.Wait()
	if err != nil {
		v.s.log.Warn("verification: listing the files that reference damaged chunks", "err", err)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	kept := v.problems[:0]
	for _, p := range v.problems {
		slices.Sort(p.ReferencedBy)
		if p.Kind == chunkbridgev1.Problem_KIND_MISSING && len(p.ReferencedBy) == 0 {
			v.counts[p.Kind]--
			continue
		}
		kept = append(kept, p)
	}
	v.problems = kept
}

// limiter paces reads to rate bytes per second.
type limiter struct {
	mu   sync.Mutex
	rate float64
	next time.Time
}

func (l *limiter) wait(ctx context.Context, n int64) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	d := time.Until(at)
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
