package datablob

import (
	"errors"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Decode returns the plain data of an unencrypted blob, at most maxSize
// bytes; maxSize ≤ 0 or above MaxBlobSize means MaxBlobSize. For an
// uncompressed blob that is the payload itself, not a copy. A zstd payload
// is decompressed into a new buffer, and more than maxSize bytes of output
// is ErrTooLarge.
//
// Memory follows the output, never a size field: a frame that declares its
// content size gets a buffer of that size only if it is within maxSize and
// within what the payload could possibly decode to; a frame that does not
// is decoded into a small buffer, retried four times larger while it
// overflows, up to maxSize. So a bomb costs at most about three times
// maxSize in allocations (the retries, and one block of overflow on each),
// however much it claims or would produce.
//
// An encrypted blob is ErrEncrypted: the key is the client's.
func (b Blob) Decode(maxSize int) ([]byte, error) {
	if maxSize <= 0 || maxSize > MaxBlobSize {
		maxSize = MaxBlobSize
	}
	switch b.Kind {
	case Uncompressed:
		if len(b.Payload) > maxSize {
			return nil, formatErr(ErrTooLarge, "payload", HeaderSize, "%d bytes of data, more than the %d-byte limit", len(b.Payload), maxSize)
		}
		return b.Payload, nil
	case Zstd:
		return decodeZstd(b.Payload, maxSize)
	case Encrypted, EncryptedZstd:
		return nil, formatErr(ErrEncrypted, "magic", 0, "%s blob; only the client holds the key", b.Kind)
	}
	return nil, formatErr(ErrBadMagic, "kind", 0, "%s is not a DataBlob kind", b.Kind)
}

// decoder is shared (DecodeAll is safe for concurrent use) and made on first
// use. With the cap limit, DecodeAll writes into the caller's buffer and
// stops, instead of growing it, once the output would outgrow it.
var decoder = sync.OnceValues(func() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(MaxBlobSize),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderConcurrency(0))
})

const (
	// firstGuess is the smallest first buffer for a frame without a
	// content size; the first guess is otherwise 4 × the payload, about
	// what zstd achieves on backup data.
	firstGuess = 64 << 10
	// maxRatio bounds what a payload can decode to: each zstd block has at
	// least 4 bytes (a 3-byte header and one RLE byte) and at most 128 KiB
	// of output.
	maxRatio = (128 << 10) / 4
)

func decodeZstd(payload []byte, maxSize int) ([]byte, error) {
	if len(payload) == 0 {
		return nil, formatErr(ErrBadZstd, "payload", HeaderSize, "empty; a zstd blob holds at least one frame")
	}
	var h zstd.Header
	if err := h.Decode(payload); err != nil {
		return nil, formatErr(ErrBadZstd, "payload", HeaderSize, "zstd frame header: %v", err)
	}
	size := min(maxSize, max(firstGuess, 4*len(payload)))
	if h.HasFCS {
		if h.FrameContentSize > uint64(maxSize) {
			return nil, formatErr(ErrTooLarge, "payload", HeaderSize, "zstd frame declares %d bytes of data, more than the %d-byte limit", h.FrameContentSize, maxSize)
		}
		if h.FrameContentSize > uint64(len(payload))*maxRatio {
			return nil, formatErr(ErrBadZstd, "payload", HeaderSize, "zstd frame declares %d bytes of data, more than %d bytes of zstd can hold", h.FrameContentSize, len(payload))
		}
		size = int(h.FrameContentSize)
	}
	dec, err := decoder()
	if err != nil {
		return nil, err // only for invalid options: a bug here
	}
	for {
		out, err := dec.DecodeAll(payload, make([]byte, 0, size))
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) && size < maxSize {
			size = min(maxSize, max(firstGuess, 4*size))
			continue
		}
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, formatErr(ErrTooLarge, "payload", HeaderSize, "zstd data decodes to more than the %d-byte limit", maxSize)
		}
		if errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, formatErr(ErrTooLarge, "payload", HeaderSize, "zstd frame needs a window over %d bytes", MaxBlobSize)
		}
		if err != nil {
			return nil, formatErr(ErrBadZstd, "payload", HeaderSize, "%v", err)
		}
		return out, nil
	}
}
