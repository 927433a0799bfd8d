package admin_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/storage"
)

// sealed is an encrypted DataBlob of b's data: the server cannot decrypt,
// so the data itself serves as ciphertext.
func sealed(t testing.TB, b blob) []byte {
	t.Helper()
	enc, err := datablob.Blob{Kind: datablob.Encrypted, IV: [datablob.IVSize]byte{7}, Payload: b.data}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// uploadEncrypted stores the blobs in the encrypted space.
func (e *env) uploadEncrypted(t testing.TB, blobs ...[]blob) {
	t.Helper()
	ctx := chunk.Encrypted(auth.NewContext(context.Background(), auth.Anonymous))
	for _, bs := range blobs {
		for _, b := range bs {
			if _, err := e.chunks.Put(ctx, chunk.Upload{ID: b.id, Algorithm: b.alg, Encoding: chunkbridgev1.Encoding_ENCODING_DATABLOB, Data: sealed(t, b), Size: int64(len(b.data))}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (e *env) existsEncrypted(t testing.TB, id chunk.ID) bool {
	t.Helper()
	_, err := e.store.Stat(t.Context(), chunk.EncryptedPrefix+id.Key())
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// GC keeps the encrypted chunks an encrypted snapshot file references and
// deletes the unreferenced ones; verify reads each back (its CRC), finds a
// corrupted one and a missing one, and never takes a plain chunk of the
// same id for an encrypted one. casync cannot read the file as an index;
// the statistics count encrypted chunks, in the totals and apart.
func TestEncryptedChunksGCAndVerify(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			e := newEnv(t, st.open(t), admin.Config{})
			kept := makeBlobs(1, 6, 1024, sha256Alg)
			gone := makeBlobs(2, 4, 1024, sha256Alg)
			plain := makeBlobs(3, 3, 1024, sha256Alg)
			e.uploadEncrypted(t, kept, gone)
			e.upload(t, plain)
			when := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
			create := &chunkbridgev1.WriteSnapshotFileRequest_Create{Type: "host", BackupId: "enc", Time: timestamppb.New(when), Name: "root.pxar", Encrypted: true}
			// Plain chunks are not in the encrypted space: refused.
			if err := e.writeSnapshotFile(t.Context(), create, plain); err == nil {
				t.Fatal("an encrypted file of plain chunks was committed")
			}
			if err := e.writeSnapshotFile(t.Context(), create, kept); err != nil {
				t.Fatal(err)
			}
			e.mustWriteSnapshot(t, "host", "plain", when, "root.pxar", plain)

			s, err := e.catalog.GetIndex(t.Context(), &chunkbridgev1.GetIndexRequest{Name: "snapshots/host/enc/2026-11-25T10:00:00Z/root.pxar.caibx"})
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("GetIndex of an encrypted file: %v, want FailedPrecondition", err)
			}

			r := e.gc(t, 0, false)
			if r.ChunksDeleted != int64(len(gone)) || r.ChunksKept != int64(len(kept)+len(plain)) || r.ReferencedMissing != 0 {
				t.Fatalf("gc: %v; want %d deleted, %d kept", r, len(gone), len(kept)+len(plain))
			}
			for _, b := range gone {
				if e.existsEncrypted(t, b.id) {
					t.Fatalf("unreferenced encrypted chunk %s survived", b.id)
				}
			}
			for _, b := range kept {
				if !e.existsEncrypted(t, b.id) || e.exists(t, b.id) {
					t.Fatalf("encrypted chunk %s: not kept, or found in the plain space", b.id)
				}
			}

			stats, err := e.adm.GetStats(t.Context(), &chunkbridgev1.GetStatsRequest{})
			if err != nil || stats.EncryptedChunks != int64(len(kept)) || stats.ChunkCount != int64(len(kept)+len(plain)) || stats.EncryptedStoredBytes <= 0 {
				t.Fatalf("stats: %v %v", stats, err)
			}

			clean, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			if !clean.Complete || len(clean.Problems) != 0 || clean.ChunksVerified != int64(len(kept)+len(plain)) || clean.ReferencedChunks != int64(len(kept)+len(plain)) {
				t.Fatalf("verify of an intact store: %v", clean)
			}

			bad := sealed(t, kept[0])
			bad[len(bad)-1] ^= 0xff // the CRC no longer matches
			overwrite(t, e.store, chunk.EncryptedPrefix+kept[0].id.Key(), bad)
			e.chunks.Forget(kept[1].id)
			if err := e.store.Delete(t.Context(), chunk.EncryptedPrefix+kept[1].id.Key()); err != nil {
				t.Fatal(err)
			}
			// A plain chunk of the missing id does not stand for it.
			e.upload(t, []blob{kept[1]})

			r2, _ := e.verify(t, &chunkbridgev1.VerifyRequest{})
			t.Logf("report: %v", r2)
			corrupt := problemsOf(r2, chunkbridgev1.Problem_KIND_CORRUPT)
			missing := problemsOf(r2, chunkbridgev1.Problem_KIND_MISSING)
			if !r2.Complete || len(corrupt) != 1 || corrupt[0].Id != kept[0].id.String() || corrupt[0].Quarantine == "" ||
				len(missing) != 1 || missing[0].Id != kept[1].id.String() {
				t.Fatalf("verify: corrupt %v, missing %v", corrupt, missing)
			}
			if e.existsEncrypted(t, kept[0].id) {
				t.Fatal("the corrupt encrypted chunk was not moved to quarantine")
			}
			if _, err := e.store.Stat(t.Context(), corrupt[0].Quarantine); err != nil {
				t.Fatalf("quarantined copy %s: %v", corrupt[0].Quarantine, err)
			}
		})
	}
}
