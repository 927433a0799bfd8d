package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// The admin commands (gc, verify, prune, stats) are clients of the
// AdminService at --chunk-service.

// exitError ends the process with code; its message, if any, is printed.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Exit codes of verify.
const (
	exitDamage    = 1 // corrupt, missing or unreadable chunks, or a corrupt index
	exitTransient = 3 // only storage-unavailable problems, or stopped by an outage: verify again later
)

type clientFlags struct {
	securityFlags
	chunkService string
	json         bool
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.chunkService, "chunk-service", "127.0.0.1:9090", "address of the chunk service (gRPC), where the AdminService runs")
	fs.BoolVar(&c.chunkServiceTLS, "chunk-service-tls", false, "connect to the chunk service over TLS")
	fs.StringVar(&c.chunkServiceCA, "chunk-service-ca", "", "PEM file of the CA that signed the chunk service's certificate (default: system roots)")
	fs.StringVar(&c.chunkServiceName, "chunk-service-server-name", "", "name to verify in the chunk service's certificate (default: from --chunk-service)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token the chunk service requires (profile: token_file)")
	fs.StringVar(&c.tokenFile, "auth-token-file", "", "the same as --token-file (the name serve uses)")
	fs.BoolVar(&c.json, "json", false, "print the result as JSON (protojson) instead of text")
	registerConfigFlags(fs)
}

func (c *clientFlags) dial() (*grpc.ClientConn, chunkbridgev1.AdminServiceClient, error) {
	token, err := c.loadToken()
	if err != nil {
		return nil, nil, err
	}
	conn, err := dialChunkService(c.chunkService, c.securityFlags, token)
	if err != nil {
		return nil, nil, err
	}
	return conn, chunkbridgev1.NewAdminServiceClient(conn), nil
}

// parseClientFlags parses an admin command's flags.
func parseClientFlags(name string, args []string, stdout, stderr io.Writer, c *clientFlags, extra func(*flag.FlagSet)) error {
	fs := newFlagSet(name, stdout)
	c.register(fs)
	if extra != nil {
		extra(fs)
	}
	return parseFlags(fs, args, slog.New(slog.NewTextHandler(stderr, nil)))
}

// rpcError words a failed call for the terminal. InvalidArgument is the
// server refusing what the flags asked for: a usage error.
func rpcError(what string, err error) error {
	if s, ok := status.FromError(err); ok {
		if s.Code() == codes.InvalidArgument {
			return usagef("%s: %s (%s)", what, s.Message(), s.Code())
		}
		return fmt.Errorf("%s: %s (%s)", what, s.Message(), s.Code())
	}
	return fmt.Errorf("%s: %w", what, err)
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// parseRate reads a byte rate: 5000, 500k, 10M, 10MB, 10MiB, 1.5G, with an
// optional "/s". k, M, G, T and KiB, MiB, … are powers of 1024; kB, MB, GB,
// TB powers of 1000.
func parseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	num := strings.TrimRightFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	unit := strings.TrimPrefix(t, num)
	mult := map[string]float64{
		"": 1, "B": 1,
		"k": 1 << 10, "K": 1 << 10, "KiB": 1 << 10, "kiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40,
		"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	}[unit]
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || mult == 0 || v < 0 {
		return 0, fmt.Errorf("rate %q: want bytes per second such as 50M, 100MB or 1GiB", s)
	}
	return int64(v * mult), nil
}

// rateFlag is a flag.Value for a byte rate.
type rateFlag int64

func (r *rateFlag) String() string { return strconv.FormatInt(int64(*r), 10) }
func (r *rateFlag) Set(s string) error {
	v, err := parseRate(s)
	*r = rateFlag(v)
	return err
}

func adminGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	var grace time.Duration
	var dryRun bool
	if err := parseClientFlags("gc", args, stdout, stderr, &c, func(fs *flag.FlagSet) {
		fs.DurationVar(&grace, "grace", 24*time.Hour, "keep unreferenced chunks written less than this long before the collection started; must exceed the longest backup session")
		fs.BoolVar(&dryRun, "dry-run", false, "report what would be deleted; delete nothing")
	}); err != nil {
		return err
	}
	conn, adm, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	type result struct {
		resp *chunkbridgev1.RunGCResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := adm.RunGC(ctx, &chunkbridgev1.RunGCRequest{Grace: durationpb.New(grace), DryRun: dryRun})
		done <- result{resp, err}
	}()
	progress := newProgressLine(stderr)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var res result
wait:
	for {
		select {
		case res = <-done:
			break wait
		case <-tick.C:
			if !progress.on {
				continue
			}
			st, err := adm.GetGCStatus(ctx, &chunkbridgev1.GetGCStatusRequest{})
			if err != nil || !st.Running {
				continue
			}
			p := st.Progress
			if st.Phase == "mark" {
				progress.show(fmt.Sprintf("gc: marking: %d index files read", p.GetIndexFiles()))
			} else {
				progress.show(fmt.Sprintf("gc: sweeping: %d/%d prefixes, %d chunks scanned, %d deleted (%s)", st.PrefixesDone, st.PrefixesTotal, p.GetChunksScanned(), p.GetChunksDeleted(), pmxclient.FormatSize(p.GetBytesDeleted())))
			}
		}
	}
	progress.clear()
	if res.err != nil {
		return rpcError("gc", res.err)
	}
	r := res.resp.GetReport()
	if c.json {
		return printJSON(stdout, r)
	}
	verb := "deleted"
	if r.DryRun {
		verb = "would delete"
	}
	fmt.Fprintf(stdout, "garbage collection finished in %s%s\n", r.Duration.AsDuration().Round(time.Millisecond), map[bool]string{true: " (dry run: nothing was deleted)"}[r.DryRun])
	fmt.Fprintf(stdout, "  started       %s on the store's clock; cutoff %s (grace %s)\n", r.Started.AsTime().Format(time.RFC3339), r.Cutoff.AsTime().Format(time.RFC3339), r.Started.AsTime().Sub(r.Cutoff.AsTime()))
	fmt.Fprintf(stdout, "  marked        %d index files, %d distinct chunks referenced\n", r.IndexFiles, r.ReferencedChunks)
	fmt.Fprintf(stdout, "  scanned       %d chunks, %s\n", r.ChunksScanned, pmxclient.FormatSize(r.BytesScanned))
	fmt.Fprintf(stdout, "  %-13s %d chunks, %s\n", verb, r.ChunksDeleted, pmxclient.FormatSize(r.BytesDeleted))
	fmt.Fprintf(stdout, "  kept          %d chunks, %s: %d referenced, %d newer than the cutoff, %d referenced by commits during the collection\n",
		r.ChunksKept, pmxclient.FormatSize(r.BytesKept), r.ChunksReferenced, r.ChunksRecent, r.ChunksProtected)
	if r.ReferencedMissing > 0 {
		fmt.Fprintf(stdout, "  WARNING       %d referenced chunks are not in the store: run chunkbridge verify\n", r.ReferencedMissing)
	}
	return nil
}

func adminVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	var (
		sample      float64
		rate        rateFlag
		resumeAfter string
		resumeDom   string
		maxDuration time.Duration
		repair      pathsFlag
	)
	if err := parseClientFlags("verify", args, stdout, stderr, &c, func(fs *flag.FlagSet) {
		fs.Float64Var(&sample, "sample", 1, "fraction of the stored chunks to read back, chosen at random (every reference is still checked)")
		fs.Var(&rate, "rate-limit", "stored bytes read per second at most, e.g. 50M (MiB/s) or 100MB; 0 for no limit")
		fs.StringVar(&resumeAfter, "resume-after", "", "continue an unfinished run after this chunk id (the last id it printed)")
		fs.StringVar(&resumeDom, "resume-domain", "", "the dedup domain of --resume-after, as the unfinished run printed it (default: the default domain)")
		fs.DurationVar(&maxDuration, "max-duration", 0, "stop after this long and print where to resume; 0 for no limit")
		fs.Var(&repair, "repair-from", "after verifying, upload corrupt and missing chunks again from this casync store directory, file, or directory of files (repeatable)")
	}); err != nil {
		return err
	}
	conn, adm, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	req := &chunkbridgev1.VerifyRequest{Sample: sample, RateLimit: int64(rate), ResumeAfter: resumeAfter, ResumeDomain: resumeDom}
	if maxDuration > 0 {
		req.MaxDuration = durationpb.New(maxDuration)
	}
	stream, err := adm.Verify(ctx, req)
	if err != nil {
		return rpcError("verify", err)
	}
	progress := newProgressLine(stderr)
	var r *chunkbridgev1.VerifyReport
	for r == nil {
		resp, err := stream.Recv()
		if err != nil {
			progress.clear()
			if errors.Is(err, io.EOF) {
				return errors.New("verify: the stream ended without a report")
			}
			return rpcError("verify", err)
		}
		if p := resp.GetProgress(); p != nil {
			progress.show(fmt.Sprintf("verify: %d/%d prefixes, %d chunks read (%s), %d problems", p.PrefixesDone, p.PrefixesTotal, p.ChunksVerified, pmxclient.FormatSize(p.BytesRead), p.Problems))
		}
		r = resp.GetReport()
	}
	progress.clear()
	if c.json {
		if err := printJSON(stdout, r); err != nil {
			return err
		}
	} else {
		printVerify(stdout, r)
	}
	if len(repair) > 0 {
		stillDamaged, err := repairFrom(ctx, conn, repair, r, stdout, stderr)
		if err != nil {
			return err
		}
		if stillDamaged {
			return &exitError{code: exitDamage}
		}
		if r.Unavailable > 0 || !r.Complete {
			return &exitError{code: exitTransient}
		}
		return nil
	}
	switch {
	case r.Corrupt+r.Missing+r.Unreadable+r.IndexesCorrupt > 0:
		return &exitError{code: exitDamage}
	case r.Unavailable > 0 || (!r.Complete && strings.Contains(r.StoppedReason, "unavailable")):
		return &exitError{code: exitTransient}
	}
	return nil
}

// pathsFlag is a repeatable flag of paths.
type pathsFlag []string

func (p *pathsFlag) String() string     { return strings.Join(*p, ",") }
func (p *pathsFlag) Set(s string) error { *p = append(*p, s); return nil }

func printVerify(w io.Writer, r *chunkbridgev1.VerifyReport) {
	for _, p := range r.Problems {
		kind := strings.TrimPrefix(p.Kind.String(), "KIND_")
		what := p.Id
		if what == "" {
			what = p.Index
		}
		if p.DedupDomain != "" && p.DedupDomain != auth.DefaultDomain {
			what += " (dedup domain " + p.DedupDomain + ")"
		}
		fmt.Fprintf(w, "%-13s %s\n", kind, what)
		if len(p.ReferencedBy) > 0 {
			fmt.Fprintf(w, "              referenced by %s\n", strings.Join(p.ReferencedBy, ", "))
		} else if p.Id != "" {
			fmt.Fprintf(w, "              referenced by nothing (garbage collection will remove it)\n")
		}
		if p.Quarantine != "" {
			fmt.Fprintf(w, "              quarantined as %s\n", p.Quarantine)
		}
		fmt.Fprintf(w, "              %s\n", p.Message)
	}
	fmt.Fprintf(w, "verified %d of %d chunks (%s read, sample %g) in %s; %d index files reference %d chunks\n",
		r.ChunksVerified, r.ChunksListed, pmxclient.FormatSize(r.BytesRead), r.Sample, r.Duration.AsDuration().Round(time.Millisecond), r.IndexFiles, r.ReferencedChunks)
	fmt.Fprintf(w, "corrupt %d, missing %d, unreadable %d, unavailable %d, corrupt index files %d\n",
		r.Corrupt, r.Missing, r.Unreadable, r.Unavailable, r.IndexesCorrupt)
	if r.Quarantined > 0 {
		fmt.Fprintf(w, "moved %d corrupt chunks to quarantine: they read as missing until their data is uploaded again (the next backup of the same data, or verify --repair-from)\n", r.Quarantined)
	}
	if len(r.DamagedFiles) > 0 {
		fmt.Fprintf(w, "damaged files (cannot be restored whole until then): %s\n", strings.Join(r.DamagedFiles, ", "))
	}
	if r.Unavailable > 0 {
		fmt.Fprintln(w, "unavailable chunks could not be read because storage was unreachable: that is no sign of damage; verify again later")
	}
	if !r.Complete {
		resume := "--resume-after " + r.LastId
		if r.LastDomain != "" && r.LastDomain != auth.DefaultDomain {
			resume = "--resume-domain " + r.LastDomain + " " + resume
		}
		fmt.Fprintf(w, "stopped early (%s): continue with %s\n", r.StoppedReason, resume)
	}
}

// printTenants prints each tenant's usage, when there is more than the
// default tenant to tell apart.
func printTenants(w io.Writer, tenants []*chunkbridgev1.TenantUsage) {
	if len(tenants) < 2 {
		return
	}
	quota := func(used, limit int64) string {
		if limit == 0 {
			return pmxclient.FormatSize(used)
		}
		return fmt.Sprintf("%s of %s (%.0f%%)", pmxclient.FormatSize(used), pmxclient.FormatSize(limit), 100*float64(used)/float64(limit))
	}
	fmt.Fprintln(w, "tenants:")
	for _, t := range tenants {
		fmt.Fprintf(w, "  %-16s domain %-12s logical %s, stored %s; %d casync indexes, %d snapshot files\n",
			t.Tenant, t.DedupDomain, quota(t.LogicalBytes, t.LogicalBytesQuota), quota(t.StoredBytes, t.StoredBytesQuota), t.CasyncIndexes, t.SnapshotFiles)
	}
}

func adminPrune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	var last, hourly, daily, weekly, monthly, yearly int
	var typ, id, tenant, ns string
	var dryRun, allNS bool
	if err := parseClientFlags("prune", args, stdout, stderr, &c, func(fs *flag.FlagSet) {
		fs.IntVar(&last, "keep-last", 0, "keep the N newest snapshots of each backup group")
		fs.IntVar(&hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last N hours that have one")
		fs.IntVar(&daily, "keep-daily", 0, "keep the newest snapshot of each of the last N days that have one")
		fs.IntVar(&weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last N ISO weeks that have one")
		fs.IntVar(&monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last N months that have one")
		fs.IntVar(&yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last N years that have one")
		fs.StringVar(&typ, "type", "", "only backup groups of this type (vm, ct, host)")
		fs.StringVar(&id, "id", "", "only this backup id (with --type)")
		fs.StringVar(&tenant, "tenant", "", "only this tenant's snapshots (default: every tenant's, each on its own)")
		fs.BoolVar(&dryRun, "dry-run", false, "print what would be kept and removed; remove nothing")
		fs.StringVar(&ns, "ns", "", "only this PBS namespace, e.g. a/b (default: the root; with neither --ns nor --tenant, every namespace of every tenant)")
		fs.BoolVar(&allNS, "all-namespaces", false, "also the namespaces below --ns")
	}); err != nil {
		return err
	}
	if last+hourly+daily+weekly+monthly+yearly == 0 {
		return usagef("prune: give at least one --keep-* option (with none, nothing would be removed)")
	}
	conn, adm, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := adm.Prune(ctx, &chunkbridgev1.PruneRequest{
		KeepLast: int32(last), KeepHourly: int32(hourly), KeepDaily: int32(daily), KeepWeekly: int32(weekly),
		KeepMonthly: int32(monthly), KeepYearly: int32(yearly), Type: typ, BackupId: id, DryRun: dryRun, Tenant: tenant,
		Namespace: ns, AllNamespaces: allNS,
	})
	if err != nil {
		return rpcError("prune", err)
	}
	if c.json {
		if err := printJSON(stdout, resp); err != nil {
			return err
		}
	} else {
		for _, d := range resp.Decisions {
			action := "keep"
			switch {
			case d.Keep:
			case d.Error != "":
				action = "FAILED"
			case d.Removed:
				action = "removed"
			default:
				action = "would remove"
			}
			owner := ""
			if d.Tenant != "" && d.Tenant != auth.DefaultTenant {
				owner = d.Tenant + ": "
			}
			if d.Namespace != "" {
				owner += "ns " + d.Namespace + ": "
			}
			fmt.Fprintf(stdout, "%-12s %s%s/%s/%s  %s", action, owner, d.Type, d.BackupId, d.Time.AsTime().UTC().Format(time.RFC3339), d.Reason)
			if d.Error != "" {
				fmt.Fprintf(stdout, ": %s", d.Error)
			}
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%d kept, %d removed%s; chunks only the removed snapshots used go at the next garbage collection\n",
			resp.Kept, resp.Removed-resp.Failed, map[bool]string{true: " (dry run: would be)"}[dryRun])
	}
	if resp.Failed > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("prune: %d snapshots could not be removed", resp.Failed)}
	}
	return nil
}

func adminStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	if err := parseClientFlags("stats", args, stdout, stderr, &c, nil); err != nil {
		return err
	}
	conn, adm, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	s, err := adm.GetStats(ctx, &chunkbridgev1.GetStatsRequest{})
	if err != nil {
		return rpcError("stats", err)
	}
	if c.json {
		return printJSON(stdout, s)
	}
	counted := time.Unix(s.CountedAt, 0)
	age := time.Since(counted).Round(time.Second)
	if s.StaleReason != "" {
		// Old figures first say so, where they cannot be missed.
		fmt.Fprintf(stdout, "STALE: the store figures below are %s old (counted at %s): %s\n",
			age, counted.UTC().Format(time.RFC3339), s.StaleReason)
	}
	fmt.Fprintf(stdout, "chunks            %d\n", s.ChunkCount)
	if s.EncryptedChunks > 0 {
		// Only when there are: most stores have none.
		fmt.Fprintf(stdout, "  encrypted       %d (%s, PBS crypt-mode encrypt)\n", s.EncryptedChunks, pmxclient.FormatSize(s.EncryptedStoredBytes))
	}
	fmt.Fprintf(stdout, "stored bytes      %s (compressed)\n", pmxclient.FormatSize(s.StoredBytes))
	fmt.Fprintf(stdout, "logical bytes     %s (uncompressed; compression ratio %.2f)\n", pmxclient.FormatSize(s.LogicalBytes), s.CompressionRatio)
	fmt.Fprintf(stdout, "referenced bytes  %s (what the indexes describe; dedup ratio %.2f)\n", pmxclient.FormatSize(s.ReferencedBytes), s.DedupRatio)
	fmt.Fprintf(stdout, "casync indexes    %d\n", s.CasyncIndexes)
	fmt.Fprintf(stdout, "snapshots         %d (%d files, %d backup groups)\n", s.Snapshots, s.SnapshotFiles, s.BackupGroups)
	if s.ChunksWithoutSize > 0 {
		fmt.Fprintf(stdout, "chunks without a recorded size: %d (read to be counted)\n", s.ChunksWithoutSize)
	}
	printTenants(stdout, s.Tenants)
	fmt.Fprintf(stdout, "this server since start: %d chunks written, %d deduplicated, %s received\n", s.ChunksWritten, s.ChunksDeduplicated, pmxclient.FormatSize(s.BytesReceived))
	fmt.Fprintf(stdout, "counted at        %s (%s ago)\n", counted.UTC().Format(time.RFC3339), age)
	return nil
}
