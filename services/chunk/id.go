package chunk

import (
	"encoding/hex"
	"fmt"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// ID is a chunk id: the 32-byte digest of the chunk's uncompressed data.
type ID [32]byte

// ParseID reads 64 hex characters (either case).
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("%w: chunk id %q: want 64 hex characters, got %d", apierr.ErrInvalid, truncate(s), len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("%w: chunk id %q is not hex", apierr.ErrInvalid, truncate(s))
	}
	return id, nil
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Key is where the chunk lives in a store, in casync's layout:
// chunks/<first 4 hex>/<64 hex>.cacnk.
func (id ID) Key() string {
	h := id.String()
	return "chunks/" + h[:4] + "/" + h + ".cacnk"
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
