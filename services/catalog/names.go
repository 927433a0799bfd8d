package catalog

import (
	"fmt"

	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

const (
	indexPrefix    = "indexes/"
	snapshotPrefix = caindex.SnapshotPrefix
)

// IndexName checks a casync index name and returns it cleaned.
func IndexName(name string) (string, error) {
	clean, err := caindex.CleanName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", apierr.ErrInvalid, err)
	}
	return clean, nil
}

// writableIndexName also refuses the names reserved for snapshots.
func writableIndexName(name string) (string, error) {
	clean, err := caindex.CleanWritableName(name)
	if err != nil {
		return "", fmt.Errorf("%w: %v", apierr.ErrInvalid, err)
	}
	return clean, nil
}
