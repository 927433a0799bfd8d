package chunk

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/datablob"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/storage"
)

// metaEncrypted marks an object of the encrypted space, for a reader of
// the store that sees the object alone (a quarantined copy, say).
const metaEncrypted = "encrypted"

// maxEncrypted bounds an encrypted chunk's DataBlob.
const maxEncrypted = datablob.MaxEncodedChunkSize

// putEncrypted stores an encrypted chunk in d, the encrypted space: the
// DataBlob as the client sent it, once its CRC is checked. Its id is the
// client's keyed digest of data the server never sees, so unlike a plain
// chunk's it is not verified: a client can only hurt its own backups
// with a wrong one, since the space is never read by casync nor
// deduplicated with plain chunks.
func (s *Service) putEncrypted(ctx context.Context, d *domain, u Upload) (created bool, err error) {
	if u.Encoding != chunkbridgev1.Encoding_ENCODING_DATABLOB {
		return false, fmt.Errorf("chunk %s: %w: an encrypted chunk is sent as a DataBlob (ENCODING_DATABLOB), not %s", u.ID, apierr.ErrInvalid, u.Encoding)
	}
	if err := checkEncrypted(u.ID, u.Data); err != nil {
		return false, err
	}
	// PBS's own limit, not format.MaxChunk: only the PBS reader serves
	// these chunks.
	if u.Size < 1 || u.Size > datablob.MaxChunkSize {
		return false, fmt.Errorf("chunk %s: %w: declared size %d: want 1 to %d", u.ID, apierr.ErrInvalid, u.Size, datablob.MaxChunkSize)
	}
	meta := storage.Metadata{metaAlgorithm: algorithmName(u.Algorithm), metaSize: strconv.FormatInt(u.Size, 10), metaEncrypted: "true"}
	return s.keep(ctx, d, u, u.Size, func() []byte { return u.Data }, meta)
}

// checkStored is checkEncrypted for an object read back: whatever is
// wrong with it, it is corrupt (it was checked when it was stored).
func checkStored(id ID, stored []byte) error {
	err := checkEncrypted(id, stored)
	if err != nil && !errors.Is(err, apierr.ErrDigestMismatch) {
		return fmt.Errorf("chunk %s: %w: the stored object is not an encrypted DataBlob", id, apierr.ErrDigestMismatch)
	}
	return err
}

// checkEncrypted checks an encrypted chunk's DataBlob: one of the
// encrypted kinds, whole, with its CRC right. A failure is a digest
// mismatch, as for a plain chunk whose data does not hash to its id.
func checkEncrypted(id ID, blob []byte) error {
	b, err := datablob.ParseChunk(blob)
	if err == nil && !b.Encrypted() {
		return fmt.Errorf("chunk %s: %w: a %s DataBlob is not encrypted: send it as a plain chunk, whose digest the server checks", id, apierr.ErrInvalid, b.Kind)
	}
	if err != nil {
		return fmt.Errorf("chunk %s: %w: encrypted DataBlob: %v", id, apierr.ErrDigestMismatch, err)
	}
	return nil
}
