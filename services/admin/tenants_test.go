package admin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/gcguard"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// Three tenants: acme and acme-dev share the dedup domain acme; globex is
// alone in its own; the default tenant has the default domain.
var (
	acmeWriter = auth.Principal{Name: "acme-w", Tenant: "acme", Role: auth.RoleWrite, Domain: "acme"}
	acmeDev    = auth.Principal{Name: "dev", Tenant: "acme-dev", Role: auth.RoleWrite, Domain: "acme"}
	globex     = auth.Principal{Name: "globex-w", Tenant: "globex", Role: auth.RoleWrite, Domain: "globex"}
)

// Names are per tenant, chunk spaces per domain, and garbage collection,
// verification and statistics cover every tenant and domain.
func TestTenantsAndDomains(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			ctx := t.Context()
			same := makeBlobs(1, 4, 1024, sha256Alg)
			acmeOnly := makeBlobs(2, 3, 1024, sha256Alg)
			globexOrphans := makeBlobs(3, 2, 1024, sha256Alg)

			// The same bytes in two domains are stored twice: globex learns
			// nothing from acme's upload, not even "already stored".
			e.uploadAs(t, acmeWriter, same, acmeOnly)
			missing, err := e.chunks.FindMissing(as(ctx, globex), ids(same))
			if err != nil || len(missing) != len(same) {
				t.Fatalf("globex's FindMissing of acme's chunks: %d of %d missing, %v; want all", len(missing), len(same), err)
			}
			if _, err := e.chunks.Get(as(ctx, globex), same[0].id, true); !errors.Is(err, apierr.ErrNotFound) {
				t.Fatalf("globex reads acme's chunk: %v; want not found", err)
			}
			created, err := e.chunks.Put(as(ctx, globex), chunk.Upload{ID: same[0].id, Algorithm: same[0].alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: same[0].data})
			if err != nil || !created {
				t.Fatalf("globex's upload of bytes acme stored: created %v, %v; want a new object", created, err)
			}
			e.uploadAs(t, globex, same[1:], globexOrphans)
			// A tenant in the same domain shares the chunk space.
			if missing, err := e.chunks.FindMissing(as(ctx, acmeDev), ids(same, acmeOnly)); err != nil || len(missing) != 0 {
				t.Fatalf("acme-dev's FindMissing of its domain's chunks: %d missing, %v; want none", len(missing), err)
			}

			// One name, three tenants, three different files.
			e.mustPutIndexAs(t, acmeWriter, "os.caibx", concat(same, acmeOnly))
			e.mustPutIndexAs(t, globex, "os.caibx", same)
			for _, c := range []struct {
				p    auth.Principal
				want int64
			}{{acmeWriter, int64(len(same) + len(acmeOnly))}, {globex, int64(len(same))}} {
				info, err := e.catalog.StatIndex(as(ctx, c.p), &chunkbridgev1.StatIndexRequest{Name: "os.caibx"})
				if err != nil || info.GetIndex().GetChunkCount() != c.want {
					t.Fatalf("%s's os.caibx: %v, %v; want %d chunks", c.p.Tenant, info, err, c.want)
				}
			}
			// Another tenant's name is as absent as a name nobody used.
			for _, p := range []auth.Principal{acmeDev, auth.Anonymous} {
				_, err := e.catalog.StatIndex(as(ctx, p), &chunkbridgev1.StatIndexRequest{Name: "os.caibx"})
				_, none := e.catalog.StatIndex(as(ctx, p), &chunkbridgev1.StatIndexRequest{Name: "nothing.caibx"})
				if status.Code(err) != codes.NotFound || status.Code(none) != codes.NotFound || bytes.Contains([]byte(status.Convert(err).Message()), []byte("acme")) {
					t.Fatalf("%s stats another tenant's index: %v (a name nobody used: %v)", p.Tenant, err, none)
				}
				list, err := e.catalog.ListIndexes(as(ctx, p), &chunkbridgev1.ListIndexesRequest{})
				if err != nil || len(list.GetIndexes()) != 0 {
					t.Fatalf("%s lists %v, %v; want nothing", p.Tenant, list, err)
				}
			}
			// An index that references chunks only in another domain is
			// refused: its tenant's domain lacks them.
			if err := e.putIndex(as(ctx, globex), "acme-chunks.caibx", acmeOnly); status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("globex's index of acme-only chunks: %v; want missing chunks", err)
			}
			// The serving rule: in the shared domain, acme-dev reads no chunk
			// of acme's by id alone, as if it were not stored; acme does.
			for _, b := range acmeOnly {
				if _, err := e.chunks.Get(as(ctx, acmeDev), b.id, true); !errors.Is(err, apierr.ErrNotFound) {
					t.Fatalf("acme-dev reads acme's chunk %s that none of its files references: %v; want not found", b.id, err)
				}
				if _, _, err := e.chunks.OpenStored(as(ctx, acmeDev), b.id); !errors.Is(err, apierr.ErrNotFound) {
					t.Fatalf("acme-dev opens acme's chunk %s: %v; want not found", b.id, err)
				}
				e.readsBackAs(t, acmeWriter, b)
			}
			when := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
			if err := e.writeSnapshot(as(ctx, acmeDev), "host", "web", when, "root.pxar", acmeOnly); err != nil {
				t.Fatal(err)
			}
			// Once a file of its own references them, it reads them.
			for _, b := range acmeOnly {
				e.readsBackAs(t, acmeDev, b)
			}
			snaps, err := e.catalog.ListSnapshots(as(ctx, acmeWriter), &chunkbridgev1.ListSnapshotsRequest{})
			if err != nil || len(snaps.GetSnapshots()) != 0 {
				t.Fatalf("acme lists acme-dev's snapshots: %v, %v", snaps, err)
			}
			if snaps, err := e.catalog.ListSnapshots(as(ctx, acmeDev), &chunkbridgev1.ListSnapshotsRequest{}); err != nil || len(snaps.GetSnapshots()) != 1 {
				t.Fatalf("acme-dev lists %v, %v; want its snapshot", snaps, err)
			}

			// A tenant is bound to its first domain.
			moved := acmeDev
			moved.Domain = "elsewhere"
			if _, err := e.chunks.FindMissing(as(ctx, moved), ids(same)); !errors.Is(err, apierr.ErrFailedPrecondition) {
				t.Fatalf("acme-dev moved to another domain: %v; want a refusal naming its binding", err)
			}

			// GC: every tenant's files are marked; the unreferenced chunks of
			// each domain go, and only they.
			r := e.gc(t, 0, false)
			if r.ChunksDeleted != int64(len(globexOrphans)) || r.IndexFiles != 3 {
				t.Fatalf("GC report %v; want %d deleted (globex's orphans) and 3 files marked", r, len(globexOrphans))
			}
			for _, b := range concat(same, acmeOnly) {
				if _, err := e.chunks.Get(as(ctx, acmeWriter), b.id, true); err != nil {
					t.Fatalf("acme's chunk %s after GC: %v", b.id, err)
				}
			}
			for _, b := range same {
				if _, err := e.chunks.Get(as(ctx, globex), b.id, true); err != nil {
					t.Fatalf("globex's chunk %s after GC: %v", b.id, err)
				}
			}
			if m, _ := e.chunks.FindMissing(as(ctx, globex), ids(globexOrphans)); len(m) != len(globexOrphans) {
				t.Fatalf("globex's orphans survived GC")
			}

			// Verify covers both domains and names the damaged tenant's file.
			vr, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			if vr.Corrupt+vr.Missing != 0 || vr.IndexFiles != 3 || !vr.Complete {
				t.Fatalf("verify of a healthy store: %v", vr)
			}
			gst := e.chunks.DomainStore("globex")
			if err := gst.Delete(ctx, same[2].id.Key()); err != nil {
				t.Fatal(err)
			}
			e.chunks.ForgetAll()
			vr, _ = e.verify(t, &chunkbridgev1.VerifyRequest{})
			if vr.Missing != 1 || len(vr.Problems) != 1 || vr.Problems[0].DedupDomain != "globex" ||
				len(vr.DamagedFiles) != 1 || vr.DamagedFiles[0] != "tenants/globex/indexes/os.caibx" {
				t.Fatalf("verify after losing a globex chunk: %v; want it missing in globex, damaging tenants/globex/indexes/os.caibx only", vr)
			}

			// Statistics per tenant.
			stats, err := e.adm.GetStats(ctx, &chunkbridgev1.GetStatsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			usage := map[string]*chunkbridgev1.TenantUsage{}
			for _, u := range stats.Tenants {
				usage[u.Tenant] = u
			}
			if u := usage["globex"]; u == nil || u.DedupDomain != "globex" || u.LogicalBytes != size(same) || u.CasyncIndexes != 1 || u.StoredBytes <= 0 {
				t.Fatalf("globex's usage %v; want its index's %d bytes, its domain and stored bytes", u, size(same))
			}
			if u := usage["acme-dev"]; u == nil || u.SnapshotFiles != 1 || u.LogicalBytes != size(acmeOnly) || u.StoredBytes != 0 {
				t.Fatalf("acme-dev's usage %v; want its snapshot's %d bytes and nothing stored by its uploads", u, size(acmeOnly))
			}
			if u := usage["acme"]; u == nil || u.StoredBytes <= 0 || u.LogicalBytes != size(same)+size(acmeOnly) {
				t.Fatalf("acme's usage %v", u)
			}
		})
	}
}

func ids(parts ...[]blob) []chunk.ID {
	var out []chunk.ID
	for _, b := range concat(parts...) {
		out = append(out, b.id)
	}
	return out
}

func size(blobs []blob) int64 {
	var n int64
	for _, b := range blobs {
		n += int64(len(b.data))
	}
	return n
}

func (e *env) mustPutIndexAs(t testing.TB, p auth.Principal, name string, blobs []blob) {
	t.Helper()
	if err := e.putIndex(as(t.Context(), p), name, blobs); err != nil {
		t.Fatalf("PutIndex %s as %s: %v", name, p.Name, err)
	}
}

// A commit that would take a tenant over a quota is refused with usage
// and limit, publishes nothing and leaves what was there; a tenant over
// its stored-bytes quota stores no new chunk. Quotas are read at each
// call, so a changed credentials file applies at once.
func TestQuotas(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			var mu sync.Mutex
			limits := map[string][2]int64{}
			set := func(tenant string, logical, stored int64) {
				mu.Lock()
				limits[tenant] = [2]int64{logical, stored}
				mu.Unlock()
			}
			book := quota.New(func(tenant string) (int64, int64) {
				mu.Lock()
				defer mu.Unlock()
				l := limits[tenant]
				return l[0], l[1]
			}, time.Hour)
			e := newEnvQuota(t, st.open(t), admin.Config{}, gcguard.Config{}, book)
			ctx := t.Context()
			first := makeBlobs(11, 4, 1024, sha256Alg)
			more := makeBlobs(12, 4, 1024, sha256Alg)

			// Logical bytes: room for one index of first, not for a second.
			set("globex", size(first)+100, 0)
			e.uploadAs(t, globex, first, more)
			e.mustPutIndexAs(t, globex, "a.caibx", first)
			err := e.putIndex(as(ctx, globex), "b.caibx", first)
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "quota exceeded") ||
				!strings.Contains(err.Error(), fmt.Sprint(size(first))) || !strings.Contains(err.Error(), fmt.Sprint(size(first)+100)) {
				t.Fatalf("a second index over the logical quota: %v; want RESOURCE_EXHAUSTED naming usage %d and limit %d", err, size(first), size(first)+100)
			}
			if _, err := e.catalog.StatIndex(as(ctx, globex), &chunkbridgev1.StatIndexRequest{Name: "b.caibx"}); status.Code(err) != codes.NotFound {
				t.Fatalf("the refused index was published: %v", err)
			}
			err = e.writeSnapshot(as(ctx, globex), "host", "h", time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), "root.pxar", more)
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("a snapshot over the logical quota: %v", err)
			}
			if snaps, err := e.catalog.ListSnapshots(as(ctx, globex), &chunkbridgev1.ListSnapshotsRequest{}); err != nil || len(snaps.GetSnapshots()) != 0 {
				t.Fatalf("the refused snapshot was published: %v, %v", snaps, err)
			}
			// Another tenant is not limited by globex's quota.
			e.uploadAs(t, acmeWriter, first)
			e.mustPutIndexAs(t, acmeWriter, "b.caibx", first)
			// A raised quota applies at once; the first index is unchanged.
			set("globex", 3*size(first), 0)
			e.mustPutIndexAs(t, globex, "b.caibx", first)
			if info, err := e.catalog.StatIndex(as(ctx, globex), &chunkbridgev1.StatIndexRequest{Name: "a.caibx"}); err != nil || info.GetIndex().GetContentSize() != size(first) {
				t.Fatalf("a.caibx after the refusal: %v, %v", info, err)
			}

			// A tenant whose files fill its logical quota stores no new chunk,
			// and a fixed file that announces more than fits is refused at
			// its start, before any chunk is sent.
			set("globex", 2*size(first), 0)
			extra := makeBlobs(14, 1, 1024, sha256Alg)[0]
			_, err = e.chunks.Put(as(ctx, globex), chunk.Upload{ID: extra.id, Algorithm: extra.alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: extra.data})
			if !errors.Is(err, apierr.ErrQuota) || e.existsIn(t, "globex", extra.id) {
				t.Fatalf("a new chunk of a tenant whose files fill its quota: %v; want refused and not stored", err)
			}
			set("globex", 3*size(first), 0)
			if err := e.createFixed(as(ctx, globex), size(first)+1); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("a fixed file announcing more than its quota leaves: %v; want RESOURCE_EXHAUSTED at its start", err)
			}
			if err := e.createFixed(as(ctx, globex), size(first)); err != nil {
				t.Fatalf("a fixed file that fits: %v", err)
			}

			// Stored bytes: globex's uploads stored some bytes; a quota below
			// them refuses new chunks and commits, not re-uploads.
			set("globex", 0, 1)
			fresh := makeBlobs(13, 1, 1024, sha256Alg)[0]
			_, err = e.chunks.Put(as(ctx, globex), chunk.Upload{ID: fresh.id, Algorithm: fresh.alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: fresh.data})
			if !errors.Is(err, apierr.ErrQuota) || !strings.Contains(err.Error(), "its quota is 1") {
				t.Fatalf("a new chunk over the stored quota: %v; want a quota refusal naming the limit", err)
			}
			if e.existsIn(t, "globex", fresh.id) {
				t.Fatal("the refused chunk was stored")
			}
			if created, err := e.chunks.Put(as(ctx, globex), chunk.Upload{ID: first[0].id, Algorithm: first[0].alg, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: first[0].data}); err != nil || created {
				t.Fatalf("re-uploading a stored chunk over the quota: created %v, %v; want accepted as already stored", created, err)
			}
			if err := e.putIndex(as(ctx, globex), "c.caibx", first); status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("a commit over the stored quota: %v", err)
			}
			// acme's uploads do not count against globex, nor the reverse.
			e.uploadAs(t, acmeWriter, []blob{fresh})
		})
	}
}

// readsBackAs is readsBack as p.
func (e *env) readsBackAs(t testing.TB, p auth.Principal, b blob) {
	t.Helper()
	c, err := e.chunks.Get(as(t.Context(), p), b.id, true)
	if err != nil || !bytes.Equal(c.Data, b.data) {
		t.Fatalf("%s reads chunk %s: %v", p.Name, b.id, err)
	}
}

// createFixed starts a fixed snapshot file of size bytes and reads the
// server's first answer: an error if its Create was refused.
func (e *env) createFixed(ctx context.Context, size int64) error {
	stream, err := e.catalog.WriteSnapshotFile(ctx)
	if err != nil {
		return err
	}
	defer stream.CloseSend()
	stream.Send(&chunkbridgev1.WriteSnapshotFileRequest{Step: &chunkbridgev1.WriteSnapshotFileRequest_Create_{
		Create: &chunkbridgev1.WriteSnapshotFileRequest_Create{Type: "vm", BackupId: "100", Time: timestamppb.New(time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)),
			Name: "disk", Fixed: true, ChunkSize: 4 << 20, FileSize: size}}})
	_, err = stream.Recv()
	return err
}

// existsIn asks storage, not the presence cache, for a chunk of domain.
func (e *env) existsIn(t testing.TB, domain string, id chunk.ID) bool {
	t.Helper()
	_, err := e.chunks.DomainStore(domain).Stat(t.Context(), id.Key())
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// Prune by an admin covers every tenant, each tenant's groups on their
// own (the same group name in two tenants is two groups), or only the
// tenant it names.
func TestPruneCoversEveryTenant(t *testing.T) {
	e := newEnv(t, memory.New(), admin.Config{})
	ctx := t.Context()
	blobs := makeBlobs(81, 2, 1024, sha256Alg)
	for _, p := range []auth.Principal{globex, acmeWriter} {
		e.uploadAs(t, p, blobs)
		for i := range 3 {
			when := time.Date(2026, 11, 20+i, 10, 0, 0, 0, time.UTC)
			if err := e.writeSnapshot(as(ctx, p), "host", "web", when, "root.pxar", blobs); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(p auth.Principal) int {
		snaps, err := e.catalog.ListSnapshots(as(ctx, p), &chunkbridgev1.ListSnapshotsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(snaps.GetSnapshots())
	}
	resp, err := e.adm.Prune(ctx, &chunkbridgev1.PruneRequest{KeepLast: 2, Tenant: "globex"})
	if err != nil || resp.Removed != 1 || count(globex) != 2 || count(acmeWriter) != 3 {
		t.Fatalf("prune --tenant globex --keep-last 2: %v, %v; globex keeps %d, acme %d; want only globex's oldest removed", resp, err, count(globex), count(acmeWriter))
	}
	resp, err = e.adm.Prune(ctx, &chunkbridgev1.PruneRequest{KeepLast: 1})
	if err != nil || resp.Removed != 3 || count(globex) != 1 || count(acmeWriter) != 1 {
		t.Fatalf("prune --keep-last 1 of every tenant: %v, %v; globex keeps %d, acme %d; want one each", resp, err, count(globex), count(acmeWriter))
	}
	for _, d := range resp.Decisions {
		if d.Tenant != "globex" && d.Tenant != "acme" {
			t.Fatalf("decision %v names no tenant", d)
		}
	}
	if _, err := e.adm.Prune(ctx, &chunkbridgev1.PruneRequest{KeepLast: 1, Tenant: "nobody"}); status.Code(err) != codes.NotFound {
		t.Fatalf("prune of a tenant that stored nothing: %v; want NOT_FOUND", err)
	}
}
