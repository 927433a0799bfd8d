package chunk

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// MaxSize is the largest chunk, uncompressed, and the largest payload.
const MaxSize = 16 << 20

// Algorithm names as recorded in object metadata.
const (
	metaAlgorithm = "algorithm"
	metaSize      = "size"
	// MetaTenant names the tenant whose upload stored the chunk: its
	// stored bytes count against that tenant's quota.
	MetaTenant    = "tenant"
	algSHA256     = "sha256"
	algSHA512_256 = "sha512-256"
)

// checkAlgorithm refuses a digest algorithm the service does not know.
func checkAlgorithm(alg chunkbridgev1.DigestAlgorithm) error {
	switch alg {
	case chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256:
		return nil
	}
	return fmt.Errorf("%w: unknown digest algorithm %d (want SHA256 or SHA512_256)", apierr.ErrInvalid, alg)
}

// digest hashes data with alg.
func digest(alg chunkbridgev1.DigestAlgorithm, data []byte) (ID, error) {
	if err := checkAlgorithm(alg); err != nil {
		return ID{}, err
	}
	if alg == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256 {
		return sha256.Sum256(data), nil
	}
	return sha512.Sum512_256(data), nil
}

func algorithmName(alg chunkbridgev1.DigestAlgorithm) string {
	if alg == chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256 {
		return algSHA256
	}
	return algSHA512_256
}

func parseAlgorithm(name string) chunkbridgev1.DigestAlgorithm {
	switch name {
	case algSHA256:
		return chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256
	case algSHA512_256:
		return chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA512_256
	}
	return chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_UNSPECIFIED
}

// codec compresses and decompresses chunk payloads. One instance is shared:
// the zstd encoder and decoder are safe for concurrent EncodeAll/DecodeAll.
type codec struct {
	enc   *zstd.Encoder
	probe *zstd.Encoder // the fastest level, for the compressibility probe
	dec   *zstd.Decoder
}

func newCodec() (*codec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, err
	}
	// One encoder per CPU, as enc has: with one, every upload of a large
	// chunk would wait its turn for the probe.
	probe, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithLowerEncoderMem(true))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(MaxSize),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, err
	}
	return &codec{enc: enc, probe: probe, dec: dec}, nil
}

// compress returns data as one zstd frame. The buffer is sized for the
// worst case so that incompressible data never regrows (and copies) it.
// Data that a probe finds incompressible is framed without compression.
func (c *codec) compress(data []byte) []byte {
	if c.incompressible(data) {
		return storedFrame(data)
	}
	return c.enc.EncodeAll(data, make([]byte, 0, c.enc.MaxEncodedSize(len(data))))
}

// Probe: probeSamples samples of probeSample bytes, spread over the chunk,
// compressed at the fastest level; if they shrink by less than 1/32 the
// chunk is taken as incompressible (already compressed or encrypted data).
// Chunks under probeMin bytes are always compressed: the probe would be
// most of the work.
const (
	probeMin     = 256 << 10
	probeSample  = 8 << 10
	probeSamples = 4
)

var probeBuf = sync.Pool{New: func() any { b := make([]byte, 0, 2*probeSample); return &b }}

func (c *codec) incompressible(data []byte) bool {
	if len(data) < probeMin {
		return false
	}
	buf := probeBuf.Get().(*[]byte)
	defer probeBuf.Put(buf)
	in, out := 0, 0
	step := (len(data) - probeSample) / (probeSamples - 1)
	for i := range probeSamples {
		sample := data[i*step : i*step+probeSample]
		*buf = c.probe.EncodeAll(sample, (*buf)[:0])
		in, out = in+len(sample), out+len(*buf)
	}
	return out > in-in/32
}

// storedFrame is data as one zstd frame of raw (stored) blocks, with the
// content size and checksum, as any zstd decoder (casync's too) reads it:
// the cost of a copy instead of a compression that would not pay.
func storedFrame(data []byte) []byte {
	const maxBlock = 128 << 10 // zstd's largest block
	blocks := max(1, (len(data)+maxBlock-1)/maxBlock)
	out := make([]byte, 0, 4+1+8+3*blocks+len(data)+4)
	out = binary.LittleEndian.AppendUint32(out, 0xFD2FB528) // magic
	// Frame header descriptor: 8-byte content size, single segment (the
	// window is the content size), content checksum.
	out = append(out, 3<<6|1<<5|1<<2)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(data)))
	rest := data
	for {
		n := min(len(rest), maxBlock)
		last := 0
		if n == len(rest) {
			last = 1
		}
		// Block header: last flag, type 0 (raw), size.
		h := uint32(n)<<3 | uint32(last)
		out = append(out, byte(h), byte(h>>8), byte(h>>16))
		out = append(out, rest[:n]...)
		rest = rest[n:]
		if last == 1 {
			break
		}
	}
	return binary.LittleEndian.AppendUint32(out, uint32(xxhash.Sum64(data)))
}

// decode returns payload decoded from enc, refusing anything that would
// exceed MaxSize before it is allocated in full.
func (c *codec) decode(enc chunkbridgev1.Encoding, payload []byte) ([]byte, error) {
	switch enc {
	case chunkbridgev1.Encoding_ENCODING_RAW:
		return payload, nil
	case chunkbridgev1.Encoding_ENCODING_ZSTD:
		out, err := c.decodeZstd(payload)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd payload: %v (or it decodes to more than %d bytes)", apierr.ErrInvalid, err, MaxSize)
		}
		return out, nil
	case chunkbridgev1.Encoding_ENCODING_XZ:
		r, err := xz.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, fmt.Errorf("%w: xz payload: %v", apierr.ErrInvalid, err)
		}
		return readLimited(r, "xz")
	case chunkbridgev1.Encoding_ENCODING_GZIP:
		r, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip payload: %v", apierr.ErrInvalid, err)
		}
		return readLimited(r, "gzip")
	}
	return nil, fmt.Errorf("%w: unknown encoding %d (want RAW, ZSTD, XZ or GZIP)", apierr.ErrInvalid, enc)
}

// scratch holds MaxSize decode buffers for frames that do not declare their
// size, so a 64 KiB chunk does not cost a fresh 16 MiB allocation.
var scratch = sync.Pool{New: func() any { b := make([]byte, 0, MaxSize); return &b }}

// decodeZstd decodes into a buffer of exactly the declared content size
// when the frame header has one (checked against MaxSize before any
// allocation), otherwise into a pooled MaxSize buffer that is copied out.
// With the cap limit DecodeAll never grows its buffer, so the output is
// bounded either way.
func (c *codec) decodeZstd(payload []byte) ([]byte, error) {
	var h zstd.Header
	if h.Decode(payload) == nil && h.HasFCS && h.FrameContentSize <= MaxSize {
		out, err := c.dec.DecodeAll(payload, make([]byte, 0, h.FrameContentSize))
		if err == nil {
			return out, nil
		}
		// Several frames, or a header that lies: take the general path.
	}
	buf := scratch.Get().(*[]byte)
	defer scratch.Put(buf)
	out, err := c.dec.DecodeAll(payload, (*buf)[:0])
	if err != nil {
		return nil, err
	}
	return append(make([]byte, 0, len(out)), out...), nil
}

func readLimited(r io.Reader, what string) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s payload: %v", apierr.ErrInvalid, what, err)
	}
	if n > MaxSize {
		return nil, fmt.Errorf("%w: %s payload decodes to more than %d bytes", apierr.ErrInvalid, what, MaxSize)
	}
	return buf.Bytes(), nil
}
