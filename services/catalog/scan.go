package catalog

import (
	"errors"
	"fmt"
	"io"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
	"github.com/chunkbridge/chunkbridge/services/catalog/caindex"
	"github.com/chunkbridge/chunkbridge/services/chunk"
)

type indexSummary struct {
	chunks, contentSize int64
	algorithm           chunkbridgev1.DigestAlgorithm
}

// digestAlgorithm maps an index's digest onto the API's.
func digestAlgorithm(d caindex.Digest) chunkbridgev1.DigestAlgorithm {
	if d == caindex.SHA256 {
		return chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256
	}
	return chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256
}

// scanIndex validates a casync index of size bytes (header, table order,
// tail) while calling each for every chunk id in table order.
func scanIndex(r io.Reader, size int64, each func(chunk.ID) error) (indexSummary, error) {
	rd := caindex.NewReader(r, size)
	h, err := rd.Header()
	if err != nil {
		return indexSummary{}, fmt.Errorf("%w: not a casync index: %v", apierr.ErrInvalid, err)
	}
	for {
		e, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return indexSummary{}, fmt.Errorf("%w: index table at byte %d: %v", apierr.ErrInvalid, rd.Offset(), err)
		}
		if err := each(chunk.ID(e.ID)); err != nil {
			return indexSummary{}, err
		}
	}
	return indexSummary{chunks: rd.Chunks(), contentSize: int64(rd.Size()), algorithm: digestAlgorithm(h.Digest())}, nil
}
