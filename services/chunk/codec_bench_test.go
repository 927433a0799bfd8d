package chunk

import (
	"crypto/rand"
	"testing"
)

// BenchmarkCompressIncompressible is the store-side cost of a 4 MiB chunk
// of random data: the probe and a raw frame, against full zstd.
func BenchmarkCompressIncompressible(b *testing.B) {
	c, err := newCodec()
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	b.Run("probe+stored", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for range b.N {
			c.compress(data)
		}
	})
	b.Run("zstd", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for range b.N {
			c.enc.EncodeAll(data, make([]byte, 0, c.enc.MaxEncodedSize(len(data))))
		}
	})
}
