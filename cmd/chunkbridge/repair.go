package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/chunker"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// verify --repair-from: after a verify run, the chunks it found corrupt
// (moved to quarantine) or missing are looked for in what the operator
// has, and uploaded again through the chunk service, which verifies each:
//
//   - a casync chunk store: PATH/<4 hex>/<64 hex>.cacnk (or
//     PATH/chunks/<4 hex>/…, a chunkbridge directory store), read by id;
//   - plain files (PATH itself, or every file under it that is not a
//     .cacnk): cut with casync's default chunker (16/64/256 KiB, what
//     `casync make` of a file and a PMXBCKUP stream backup make) and in
//     fixed 4 MiB pieces (a PMXBCKUP --fixed backup), each piece hashed
//     with SHA-256 and SHA-512/256 and uploaded if it is a wanted chunk.
//
// Chunks of a casync directory tree (.caidx) come from its archive
// serialization, not from the files: repair those from a casync store.

// repairWanted is one damaged chunk to look for.
type repairWanted struct {
	problem  *chunkbridgev1.Problem
	doms     []string // the dedup domains that lack it
	repaired bool
	note     string // why it is still damaged after an attempt
}

type repairRun struct {
	ctx                  context.Context
	conn                 *grpc.ClientConn
	streams              map[string]grpc.BidiStreamingClient[chunkbridgev1.UploadChunksRequest, chunkbridgev1.UploadChunksResponse]
	wanted               map[[32]byte]*repairWanted
	left                 int // wanted and not yet repaired
	progress             *progressLine
	fromStore, fromFiles int
}

// repairFrom uploads the damaged chunks of report r found under paths and
// prints a summary; it reports whether anything is still damaged.
func repairFrom(ctx context.Context, conn *grpc.ClientConn, paths []string, r *chunkbridgev1.VerifyReport, stdout, stderr io.Writer) (bool, error) {
	run := &repairRun{ctx: ctx, conn: conn, wanted: map[[32]byte]*repairWanted{}, progress: newProgressLine(stderr),
		streams: map[string]grpc.BidiStreamingClient[chunkbridgev1.UploadChunksRequest, chunkbridgev1.UploadChunksResponse]{}}
	for _, p := range r.Problems {
		if p.Kind != chunkbridgev1.Problem_KIND_CORRUPT && p.Kind != chunkbridgev1.Problem_KIND_MISSING {
			continue
		}
		b, err := hex.DecodeString(p.Id)
		if err != nil || len(b) != 32 {
			continue
		}
		dom := p.DedupDomain
		if dom == "" {
			dom = auth.DefaultDomain
		}
		if w, ok := run.wanted[[32]byte(b)]; ok { // damaged in two domains
			w.doms = append(w.doms, dom)
			w.problem.ReferencedBy = append(w.problem.ReferencedBy, p.ReferencedBy...)
			continue
		}
		p = proto.Clone(p).(*chunkbridgev1.Problem)
		run.wanted[[32]byte(b)] = &repairWanted{problem: p, doms: []string{dom}}
	}
	run.left = len(run.wanted)
	if run.left == 0 {
		fmt.Fprintln(stdout, "repair: no corrupt or missing chunks to upload again")
		return r.Unreadable+r.IndexesCorrupt > 0, nil
	}
	defer func() {
		for _, st := range run.streams {
			st.CloseSend()
		}
	}()
	for _, p := range paths {
		if run.left == 0 {
			break
		}
		if err := run.from(ctx, p); err != nil {
			run.progress.clear()
			return true, err
		}
	}
	run.progress.clear()
	return run.summary(stdout, r), nil
}

// from repairs from one path: a casync store's chunk files by id first,
// then any plain files under it.
func (run *repairRun) from(ctx context.Context, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("repair from %s: %w: give a casync store directory, a file or a directory of files", path, err)
	}
	if !st.IsDir() {
		return run.chunkFile(ctx, path)
	}
	for id, w := range run.wanted {
		if w.repaired {
			continue
		}
		h := hex.EncodeToString(id[:])
		for _, f := range []string{filepath.Join(path, h[:4], h+".cacnk"), filepath.Join(path, "chunks", h[:4], h+".cacnk")} {
			data, err := readChunkFile(f)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("repair from %s: %w", f, err)
			}
			ok, err := run.uploadStored(id, data, f)
			if err != nil {
				return err
			}
			if ok {
				run.fromStore++
				break
			}
		}
	}
	if run.left == 0 {
		return nil
	}
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return fmt.Errorf("repair from %s: %w", p, err)
		case run.left == 0:
			return filepath.SkipAll
		case !d.Type().IsRegular() || strings.HasSuffix(p, ".cacnk"):
			return nil
		}
		return run.chunkFile(ctx, p)
	})
}

// readChunkFile reads a .cacnk, refusing one larger than any chunk.
func readChunkFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, format.MaxChunk+format.MaxChunk/8+1))
	if err != nil {
		return nil, err
	}
	if len(data) > format.MaxChunk+format.MaxChunk/8 {
		return nil, fmt.Errorf("%d bytes or more: larger than any chunk; not a chunk file", len(data))
	}
	return data, nil
}

// uploadStored uploads a casync chunk file: compressed, with no word of
// its digest algorithm, so SHA-512/256 (casync's default) is tried, then
// SHA-256. A file that matches neither is left as it is.
func (run *repairRun) uploadStored(id [32]byte, data []byte, name string) (bool, error) {
	enc := chunkEncoding(data)
	if enc == chunkbridgev1.Encoding_ENCODING_UNSPECIFIED {
		run.wanted[id].note = fmt.Sprintf("%s is not zstd, xz or gzip: not a casync chunk file", name)
		return false, nil
	}
	for _, alg := range []chunkbridgev1.DigestAlgorithm{chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256} {
		ok, err := run.upload(id, alg, enc, data, name)
		if err != nil || ok {
			return ok, err
		}
	}
	return false, nil
}

func chunkEncoding(data []byte) chunkbridgev1.Encoding {
	switch {
	case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return chunkbridgev1.Encoding_ENCODING_ZSTD
	case bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return chunkbridgev1.Encoding_ENCODING_XZ
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		return chunkbridgev1.Encoding_ENCODING_GZIP
	}
	return chunkbridgev1.Encoding_ENCODING_UNSPECIFIED
}

// chunkFile cuts a plain file with casync's default chunker and in fixed
// 4 MiB pieces, and uploads every piece that is a wanted chunk.
func (run *repairRun) chunkFile(ctx context.Context, name string) error {
	for _, sizes := range [][3]int{
		{chunker.DefaultMin, chunker.DefaultAvg, chunker.DefaultMax},
		{pmxclient.DefaultFixedChunkSize, pmxclient.DefaultFixedChunkSize, pmxclient.DefaultFixedChunkSize},
	} {
		if run.left == 0 {
			return nil
		}
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("repair from %s: %w", name, err)
		}
		err = run.chunkReader(ctx, f, name, sizes)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (run *repairRun) chunkReader(ctx context.Context, r io.Reader, name string, sizes [3]int) error {
	c, err := chunker.New(r, sizes[0], sizes[1], sizes[2])
	if err != nil {
		return fmt.Errorf("repair from %s: %w", name, err)
	}
	var read int64
	for run.left > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		piece, err := c.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("repair from %s: read: %w", name, err)
		}
		read += int64(len(piece))
		run.progress.show(fmt.Sprintf("repair: %d chunks still wanted; reading %s (%s)", run.left, name, pmxclient.FormatSize(read)))
		for _, h := range []struct {
			id  [32]byte
			alg chunkbridgev1.DigestAlgorithm
		}{
			{sha256.Sum256(piece), chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256},
			{sha512.Sum512_256(piece), chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256},
		} {
			if w, ok := run.wanted[h.id]; ok && !w.repaired {
				ok, err := run.upload(h.id, h.alg, chunkbridgev1.Encoding_ENCODING_RAW, piece, name)
				if err != nil {
					return err
				}
				if ok {
					run.fromFiles++
				}
			}
		}
	}
	return nil
}

// upload sends one chunk and waits for its acknowledgement. It reports
// whether the chunk is stored whole now; a refusal is noted on the chunk.
// Only the stream's failure is an error.
func (run *repairRun) upload(id [32]byte, alg chunkbridgev1.DigestAlgorithm, enc chunkbridgev1.Encoding, data []byte, from string) (bool, error) {
	w := run.wanted[id]
	for len(w.doms) > 0 {
		ok, err := run.uploadTo(w.doms[0], w, id, alg, enc, data, from)
		if !ok || err != nil {
			return false, err
		}
		w.doms = w.doms[1:]
	}
	w.repaired, w.note = true, ""
	run.left--
	return true, nil
}

// stream is the upload stream into one dedup domain's chunk space: the
// admin names the domain the way a gateway names its client's principal.
func (run *repairRun) stream(dom string) (grpc.BidiStreamingClient[chunkbridgev1.UploadChunksRequest, chunkbridgev1.UploadChunksResponse], error) {
	if st, ok := run.streams[dom]; ok {
		return st, nil
	}
	// Named for the default domain too: the admin's own principal works
	// in its tenant's domain, which need not be the default one.
	ctx := metadata.AppendToOutgoingContext(run.ctx, auth.ForwardKey, "verify-repair;"+auth.DefaultTenant+";admin;"+dom)
	st, err := chunkbridgev1.NewChunkServiceClient(run.conn).UploadChunks(ctx)
	if err != nil {
		return nil, rpcError("repair: open an upload stream to the chunk service", err)
	}
	run.streams[dom] = st
	return st, nil
}

// uploadTo uploads one chunk into one domain; see upload.
func (run *repairRun) uploadTo(dom string, w *repairWanted, id [32]byte, alg chunkbridgev1.DigestAlgorithm, enc chunkbridgev1.Encoding, data []byte, from string) (bool, error) {
	stream, err := run.stream(dom)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&chunkbridgev1.UploadChunksRequest{Id: hex.EncodeToString(id[:]), Algorithm: alg, Encoding: enc, Data: data}); err != nil {
		_, err = stream.Recv() // the stream's own error
		return false, rpcError("repair: upload", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return false, rpcError("repair: upload", err)
	}
	switch {
	case codes.Code(resp.Code) == codes.DataLoss:
		// Another digest algorithm may match; the caller tries it.
		w.note = fmt.Sprintf("%s does not hash to the chunk's id", from)
		return false, nil
	case resp.Code != 0:
		w.note = fmt.Sprintf("upload from %s refused: %s", from, resp.Message)
		return false, nil
	case !resp.Created && w.problem.Kind == chunkbridgev1.Problem_KIND_CORRUPT && w.problem.Quarantine == "":
		// Verify could not move it out of the way: the damaged copy is
		// still what the store holds.
		w.note = "still corrupt in the store (verify could not move it to quarantine): run chunkbridge verify again, then repair"
		return false, nil
	}
	return true, nil
}

// summary prints what was repaired and what is still damaged, and
// reports whether anything is.
func (run *repairRun) summary(w io.Writer, r *chunkbridgev1.VerifyReport) bool {
	damaged := map[string]bool{}
	var still []*repairWanted
	for _, wt := range run.wanted {
		if !wt.repaired {
			still = append(still, wt)
			for _, f := range wt.problem.ReferencedBy {
				damaged[f] = true
			}
		}
	}
	for _, p := range r.Problems {
		if p.Kind == chunkbridgev1.Problem_KIND_INDEX_CORRUPT {
			damaged[p.Index] = true
		}
		if p.Kind == chunkbridgev1.Problem_KIND_UNREADABLE {
			for _, f := range p.ReferencedBy {
				damaged[f] = true
			}
		}
	}
	slices.SortFunc(still, func(a, b *repairWanted) int { return strings.Compare(a.problem.Id, b.problem.Id) })
	for _, wt := range still {
		fmt.Fprintf(w, "%-13s %s\n", "NOT REPAIRED", wt.problem.Id)
		if len(wt.problem.ReferencedBy) > 0 {
			fmt.Fprintf(w, "              referenced by %s\n", strings.Join(wt.problem.ReferencedBy, ", "))
		}
		note := wt.note
		if note == "" {
			note = "not found in the given paths"
		}
		fmt.Fprintf(w, "              %s\n", note)
	}
	fmt.Fprintf(w, "repair: repaired %d of %d damaged chunks (%d from chunk files, %d by chunking files); still missing %d\n",
		len(run.wanted)-len(still), len(run.wanted), run.fromStore, run.fromFiles, len(still))
	if listed := int64(len(r.Problems)); r.Corrupt+r.Missing+r.Unreadable+r.Unavailable+r.IndexesCorrupt > listed {
		fmt.Fprintf(w, "repair: the report listed only %d problems: run verify --repair-from again for the rest\n", listed)
	}
	if len(damaged) == 0 {
		if len(r.DamagedFiles) > 0 {
			fmt.Fprintf(w, "repair: whole again: %s\n", strings.Join(r.DamagedFiles, ", "))
		}
		return false
	}
	names := make([]string, 0, len(damaged))
	for f := range damaged {
		names = append(names, f)
	}
	slices.Sort(names)
	fmt.Fprintf(w, "repair: still damaged: %s\n", strings.Join(names, ", "))
	return true
}
