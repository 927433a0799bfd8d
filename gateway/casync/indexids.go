package casync

import (
	"io"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/caindex"
)

// scanIndexIDs reads a casync index from r as it arrives, reporting its
// digest algorithm once the header is read and then each chunk id.
func scanIndexIDs(r io.Reader, onHeader func(chunkbridgev1.DigestAlgorithm), onID func(id) error) error {
	_, err := caindex.Scan(r, format.MaxIndex, func(h caindex.Header) error {
		alg := chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256
		if h.Digest() == caindex.SHA256 {
			alg = chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256
		}
		onHeader(alg)
		return nil
	}, func(e caindex.Entry) error { return onID(e.ID) })
	return err
}
