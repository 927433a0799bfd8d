package admin

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// Policy is a retention policy with Proxmox Backup Server's keep-* options.
//
// The rules run in the order keep-last, keep-hourly, keep-daily,
// keep-weekly, keep-monthly, keep-yearly over a backup group's snapshots,
// newest first, and each rule only looks at snapshots no earlier rule has
// decided about:
//
//   - keep-last N keeps the N newest snapshots.
//   - A period rule (hourly, daily, …) N walks the snapshots from the
//     newest, grouping them by their hour, day, ISO week, month or year
//     (UTC). The newest snapshot of a period is kept, and the other
//     snapshots of that period are removed, until N periods have a kept
//     snapshot; then the rule stops. A period that already holds a
//     snapshot kept by an earlier rule is skipped and does not count
//     towards N, so the rules add up rather than overlap.
//   - Whatever no rule kept is removed. With no option set at all,
//     everything is kept.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
}

func (p Policy) none() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0
}

// Decide applies p to the snapshot times of one backup group, newest
// first: for each, whether it is kept and which rule decided. The PBS
// gateway prunes with it as its caller, whose role may delete snapshots
// without being an admin.
func (p Policy) Decide(times []time.Time) (keep []bool, reasons []string) {
	for _, v := range decide(p, times) {
		keep, reasons = append(keep, v.keep), append(reasons, v.reason)
	}
	return keep, reasons
}

// verdict is a rule's decision about one snapshot.
type verdict struct {
	keep   bool
	reason string
}

type pruneRule struct {
	name   string
	keep   int
	period func(i int, t time.Time) string
}

func isoWeek(t time.Time) string {
	y, w := t.ISOWeek()
	return fmt.Sprintf("%d-W%02d", y, w)
}

// decide applies p to the snapshot times of one backup group, which must
// be sorted newest first, and returns a verdict for each.
func decide(p Policy, times []time.Time) []verdict {
	out := make([]verdict, len(times))
	if p.none() {
		for i := range out {
			out[i] = verdict{true, "no keep option given: everything is kept"}
		}
		return out
	}
	layout := func(l string) func(int, time.Time) string {
		return func(_ int, t time.Time) string { return t.UTC().Format(l) }
	}
	rules := []pruneRule{
		{"keep-last", p.Last, func(i int, _ time.Time) string { return strconv.Itoa(i) }},
		{"keep-hourly", p.Hourly, layout("2006-01-02T15h")},
		{"keep-daily", p.Daily, layout("2006-01-02")},
		{"keep-weekly", p.Weekly, func(_ int, t time.Time) string { return isoWeek(t.UTC()) }},
		{"keep-monthly", p.Monthly, layout("2006-01")},
		{"keep-yearly", p.Yearly, layout("2006")},
	}
	decided := make([]bool, len(times))
	for _, r := range rules {
		if r.keep <= 0 {
			continue
		}
		covered := map[string]bool{} // periods with a snapshot kept by an earlier rule
		for i, t := range times {
			if decided[i] && out[i].keep {
				covered[r.period(i, t)] = true
			}
		}
		kept := map[string]bool{}
		for i, t := range times {
			if decided[i] {
				continue
			}
			per := r.period(i, t)
			if covered[per] {
				continue
			}
			if kept[per] {
				decided[i], out[i] = true, verdict{false, fmt.Sprintf("%s: a newer snapshot of %s is kept", r.name, per)}
				continue
			}
			if len(kept) >= r.keep {
				break
			}
			kept[per] = true
			reason := r.name + " " + per
			if r.name == "keep-last" {
				reason = fmt.Sprintf("keep-last (%d of %d)", len(kept), r.keep)
			}
			decided[i], out[i] = true, verdict{true, reason}
		}
	}
	for i := range out {
		if !decided[i] {
			out[i] = verdict{false, "no keep rule selects it"}
		}
	}
	return out
}

const snapshotTimeLayout = "2006-01-02T15:04:05Z"

// decideGroups applies p to each backup group of one tenant's snapshots
// (sorted by group, newest first within a group, as ListSnapshots gives
// them).
func decideGroups(p Policy, tenant string, snaps []*chunkbridgev1.Snapshot) []*chunkbridgev1.PruneDecision {
	var out []*chunkbridgev1.PruneDecision
	for start := 0; start < len(snaps); {
		end := start
		// A group is its namespace, type and id: the same type and id in
		// two namespaces are pruned apart, as PBS does.
		for end < len(snaps) && snaps[end].GetNamespace() == snaps[start].GetNamespace() &&
			snaps[end].GetType() == snaps[start].GetType() && snaps[end].GetBackupId() == snaps[start].GetBackupId() {
			end++
		}
		group := snaps[start:end]
		times := make([]time.Time, len(group))
		for i, sn := range group {
			times[i] = sn.GetTime().AsTime()
		}
		for i, v := range decide(p, times) {
			out = append(out, &chunkbridgev1.PruneDecision{
				Namespace: group[i].GetNamespace(), Type: group[i].GetType(), BackupId: group[i].GetBackupId(), Time: group[i].GetTime(), Keep: v.keep, Reason: v.reason, Tenant: tenant,
			})
		}
		start = end
	}
	return out
}

// Prune applies the policy to each backup group of every tenant (or the
// one named) and deletes the snapshots
// it does not keep, through the catalog.
func (s *Server) Prune(ctx context.Context, req *chunkbridgev1.PruneRequest) (*chunkbridgev1.PruneResponse, error) {
	p := Policy{Last: int(req.GetKeepLast()), Hourly: int(req.GetKeepHourly()), Daily: int(req.GetKeepDaily()),
		Weekly: int(req.GetKeepWeekly()), Monthly: int(req.GetKeepMonthly()), Yearly: int(req.GetKeepYearly())}
	for name, v := range map[string]int{"keep_last": p.Last, "keep_hourly": p.Hourly, "keep_daily": p.Daily, "keep_weekly": p.Weekly, "keep_monthly": p.Monthly, "keep_yearly": p.Yearly} {
		if v < 0 {
			return nil, apierr.Status(fmt.Errorf("%w: %s is %d; want 0 or more", apierr.ErrInvalid, name, v))
		}
	}
	if req.GetBackupId() != "" && req.GetType() == "" {
		return nil, apierr.Status(fmt.Errorf("%w: a backup id needs its type", apierr.ErrInvalid))
	}
	bindings, err := chunk.Bindings(ctx, s.store)
	if err != nil {
		return nil, apierr.Status(fmt.Errorf("prune: %w", err))
	}
	tenants := slices.Sorted(maps.Keys(bindings))
	// Prune of everything (no tenant, no namespace) covers every
	// namespace; otherwise the one named, and those below it if asked.
	var depth int32
	if req.GetAllNamespaces() || (req.GetTenant() == "" && req.GetNamespace() == "") {
		depth = catalog.MaxNamespaceDepth
	}
	if t := req.GetTenant(); t != "" {
		if _, ok := bindings[t]; !ok {
			return nil, apierr.Status(fmt.Errorf("%w: tenant %q has stored nothing (tenants: %s)", apierr.ErrNotFound, t, strings.Join(tenants, ", ")))
		}
		tenants = []string{t}
	}
	// Each tenant's snapshots are listed and deleted as that tenant: the
	// admin acts for it, with its own rights.
	caller := auth.FromContext(ctx)
	as := map[string]context.Context{}
	resp := &chunkbridgev1.PruneResponse{}
	for _, t := range tenants {
		tctx := auth.NewContext(ctx, auth.Principal{Name: caller.Name, Tenant: t, Role: caller.Role, Domain: bindings[t]})
		as[t] = tctx
		list, err := s.catalog.ListSnapshots(tctx, &chunkbridgev1.ListSnapshotsRequest{Namespace: req.GetNamespace(), MaxDepth: depth, Type: req.GetType(), BackupId: req.GetBackupId()})
		if status.Code(err) == codes.NotFound && len(tenants) > 1 {
			continue // this tenant has no such namespace
		}
		if err != nil {
			return nil, err
		}
		resp.Decisions = append(resp.Decisions, decideGroups(p, t, list.GetSnapshots())...)
	}
	for _, d := range resp.Decisions {
		if d.Keep {
			resp.Kept++
			continue
		}
		resp.Removed++
		if req.GetDryRun() {
			continue
		}
		when := d.GetTime().AsTime().UTC().Format(snapshotTimeLayout)
		_, err := s.catalog.DeleteSnapshot(as[d.Tenant], &chunkbridgev1.DeleteSnapshotRequest{Namespace: d.Namespace, Type: d.Type, BackupId: d.BackupId, Time: when})
		if err != nil {
			if ctx.Err() != nil {
				return nil, apierr.Status(ctx.Err())
			}
			d.Error = status.Convert(err).Message()
			resp.Failed++
			s.log.Warn("prune: delete snapshot failed", "tenant", d.Tenant, "namespace", d.Namespace, "type", d.Type, "backup_id", d.BackupId, "time", when, "err", d.Error)
			continue
		}
		d.Removed = true
		s.metrics.pruneRemoved.Inc()
		s.log.Info("prune: snapshot removed", "tenant", d.Tenant, "namespace", d.Namespace, "type", d.Type, "backup_id", d.BackupId, "time", when, "reason", d.Reason)
	}
	return resp, nil
}
