package memory_test

import (
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/memory"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(*testing.T) storage.Store { return memory.New() })
}

// The prefixed view passes the same suite, over a store that holds other
// objects beside its prefix.
func TestPrefixedConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s := memory.New()
		other := storage.Prefixed(s, "tenants/other/")
		if _, err := other.PutIfAbsent(t.Context(), "indexes/x.caibx", strings.NewReader("x"), 1, nil); err != nil {
			t.Fatal(err)
		}
		return storage.Prefixed(s, "tenants/t/")
	})
}
