package catalog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/internal/budget"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// Blob files of a snapshot (PBS: index.json.blob, client.log.blob, …) sit
// next to its index files, under the same tenant view. They reference no
// chunks, so garbage collection and verification skip them (their names
// are no .fidx/.didx).

// maxBlob is the largest blob file: PBS's 128 MiB and its envelope.
const maxBlob = datablob.MaxEncodedSize

// defaultBlobSpools bounds the blobs spooled at once: 2 GiB of spool disk.
const defaultBlobSpools = 16

// defaultIndexSpools bounds the casync indexes spooled at once: 8 GiB of
// spool disk at the largest index.
const defaultIndexSpools = 8

const blobSuffix = ".blob"

func checkBlobName(name string) error {
	if err := checkFileName(name); err != nil {
		return err
	}
	if !strings.HasSuffix(name, blobSuffix) || name == blobSuffix {
		return fmt.Errorf("%w: blob file %q: want a name ending in %s", apierr.ErrInvalid, name, blobSuffix)
	}
	return nil
}

// PutSnapshotBlob stores a blob file in a snapshot, once.
func (s *Server) PutSnapshotBlob(stream grpc.ClientStreamingServer[chunkbridgev1.PutSnapshotBlobRequest, chunkbridgev1.PutSnapshotBlobResponse]) error {
	ctx := stream.Context()
	if err := auth.Check(ctx, auth.Append, "snapshots"); err != nil {
		return apierr.Status(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return apierr.Status(fmt.Errorf("put snapshot blob: %w", err))
	}
	if first.GetTime() == nil {
		return apierr.Status(fmt.Errorf("%w: put snapshot blob: the snapshot time is required", apierr.ErrInvalid))
	}
	t := first.GetTime().AsTime()
	if t.After(time.Now().Add(maxClockSkew)) {
		return apierr.Status(fmt.Errorf("%w: snapshot time %s is in the future; check the client's clock", apierr.ErrInvalid, t.UTC().Format(time.RFC3339)))
	}
	dir, err := snapshotDir(first.GetNamespace(), first.GetType(), first.GetBackupId(), t.UTC().Format(snapshotTimeLayout))
	if err == nil {
		err = checkBlobName(first.GetName())
	}
	if err == nil {
		err = s.namespaceExists(ctx, first.GetNamespace())
	}
	if err != nil {
		return apierr.Status(err)
	}
	path := dir + "/" + first.GetName()
	// A tenant over a quota stores no blob either (blobs are not counted
	// in its usage: docs/tenants.md).
	tenant := auth.FromContext(ctx).Tenant
	if err := errors.Join(s.cfg.Quota.LogicalFull(tenant), s.cfg.Quota.CheckStored(ctx, tenant)); err != nil {
		return apierr.Status(fmt.Errorf("blob file %s: %w", path, err))
	}
	// Spooled to disk, as indexes are: many concurrent 128 MiB blobs must
	// not be held in memory. Memory is one received message per call; the
	// spools themselves are bounded in number, so that concurrent calls
	// cannot fill the spool disk either.
	if err := holdSpool(ctx, s.blobSpools, "blob", "--max-blob-spools"); err != nil {
		return apierr.Status(fmt.Errorf("blob file %s: %w", path, err))
	}
	defer s.blobSpools.Release(1)
	f, err := os.CreateTemp(s.cfg.SpoolDir, "blob-*")
	if err != nil {
		return apierr.Status(fmt.Errorf("blob file %s: spool: %w", path, err))
	}
	defer os.Remove(f.Name())
	defer f.Close()
	size, err := spool(f, first.GetData(), func() ([]byte, error) {
		msg, err := stream.Recv()
		return msg.GetData(), err
	}, maxBlob, "blob file "+path+" (128 MiB of data and its DataBlob header at most)")
	if err != nil {
		return apierr.Status(fmt.Errorf("put snapshot blob: %w", err))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return apierr.Status(fmt.Errorf("blob file %s: %w", path, err))
	}
	meta := storage.Metadata{metaCreated: time.Now().UTC().Format(time.RFC3339Nano), chunk.MetaTenant: tenant}
	created, err := s.view(ctx).PutIfAbsent(ctx, snapshotPrefix+path, io.LimitReader(f, size), size, meta)
	if err == nil && !created {
		err = apierr.ErrExists
	}
	if err != nil {
		return apierr.Status(fmt.Errorf("blob file %s: %w", path, err))
	}
	return stream.SendAndClose(&chunkbridgev1.PutSnapshotBlobResponse{Path: path, Size: size})
}

// holdSpool takes one of spools (what a call spools: "blob", "index"),
// waiting its turn until ctx ends; flag is the setting that sizes it.
func holdSpool(ctx context.Context, spools *budget.Budget, what, flag string) error {
	if !spools.TryAcquire(1) {
		if spoolWaits != nil {
			spoolWaits()
		}
		err := spools.Acquire(ctx, 1)
		if spoolWaited != nil {
			spoolWaited(err)
		}
		if err != nil {
			return fmt.Errorf("waiting for one of the %d %s spools, which other uploads hold (raise %s if this is common): %w", spools.Size(), what, flag, err)
		}
	}
	if spoolHeld != nil {
		spoolHeld()
	}
	return nil
}

// spoolWaits, spoolWaited and spoolHeld, set by tests, are called when an
// upload has to wait for a spool, when that wait ends, and once it holds
// one.
var (
	spoolWaits, spoolHeld func()
	spoolWaited           func(error)
)

// GetSnapshotFile streams a blob or index file of a snapshot as stored.
func (s *Server) GetSnapshotFile(req *chunkbridgev1.GetSnapshotFileRequest, stream grpc.ServerStreamingServer[chunkbridgev1.GetSnapshotFileResponse]) error {
	ctx := stream.Context()
	if err := auth.Check(ctx, auth.Read, "snapshots"); err != nil {
		return apierr.Status(err)
	}
	path := strings.TrimPrefix(req.GetPath(), "/")
	if p, ok := parseBlobPath(path); ok {
		path = p.String()
	} else {
		p, err := parseSnapshotPath(path, false)
		if err != nil {
			return apierr.Status(err)
		}
		path = p.String()
	}
	rc, _, err := s.view(ctx).Get(ctx, snapshotPrefix+path)
	if err != nil {
		return apierr.Status(notFound("snapshot file", path, err))
	}
	defer rc.Close()
	return sendPieces(rc, func(b []byte) error { return stream.Send(&chunkbridgev1.GetSnapshotFileResponse{Data: b}) }, "snapshot file "+path)
}

// parseBlobPath reports whether path is a valid
// [ns/<a>/…]<type>/<id>/<time>/<name>.blob.
func parseBlobPath(path string) (snapshotPath, bool) {
	ns, parts, err := splitNamespace(strings.Split(path, "/"))
	if err != nil || len(parts) != 4 {
		return snapshotPath{}, false
	}
	if _, err := snapshotDir(ns, parts[0], parts[1], parts[2]); err != nil {
		return snapshotPath{}, false
	}
	if checkBlobName(parts[3]) != nil {
		return snapshotPath{}, false
	}
	return snapshotPath{ns, parts[0], parts[1], parts[2], parts[3]}, true
}
