package catalog

import (
	"errors"
	"fmt"
	"io"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
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
	var alg chunkbridgev1.DigestAlgorithm
	rd, err := caindex.Scan(r, size,
		func(h caindex.Header) error { alg = digestAlgorithm(h.Digest()); return nil },
		func(e caindex.Entry) error { return each(chunk.ID(e.ID)) })
	var fe *caindex.FormatError
	if errors.As(err, &fe) {
		return indexSummary{}, fmt.Errorf("%w: not a valid casync index: %v", apierr.ErrInvalid, err)
	}
	if err != nil {
		return indexSummary{}, err
	}
	return indexSummary{chunks: rd.Chunks(), contentSize: int64(rd.Size()), algorithm: alg}, nil
}
