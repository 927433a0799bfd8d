// Package format is the bottom floor of chunkbridge: every wire and file
// format it speaks, as pure codecs on io.Reader and io.Writer that know
// nothing of sockets, gRPC or storage (docs/formats.md):
//
//   - caproto: casync's remote protocol frames;
//   - caindex: casync's .caibx/.caidx index files;
//   - chunker: casync's content-defined chunker;
//   - pmxproto: PMXBCKUP packets;
//   - pbsindex: Proxmox's .fidx/.didx index files;
//   - pbsidx: the checksummed .fidx/.didx of today's Proxmox Backup Server, which the PBS gateway serves;
//   - datablob: the PBS DataBlob envelope of chunks and .blob files;
//   - pbsmanifest: the index.json manifest of a PBS snapshot.
//
// This package holds the limits that span several formats, derived from
// the formats' own, so that each is spelled once.
package format

import (
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// MaxChunk is the largest chunk, uncompressed, that chunkbridge accepts:
// the largest that every protocol can carry back to a client. A casync
// CHUNK frame holds 16 MiB − 56 bytes of data and a PMXBCKUP Chunk packet
// 16 MiB − 46, so a larger chunk could be stored through one protocol and
// then never restored through the other. It is refused when it is
// uploaded or referenced, never discovered when it is read.
const MaxChunk = min(caproto.MaxChunkData, pmxproto.MaxChunkData)

// MaxIndex is the largest casync index chunkbridge accepts by default,
// over caprotocol, over HTTP and in the catalog alike: 1 GiB (a 200 GB
// blob at 64 KiB chunks has an index of about 130 MB).
const MaxIndex = 1 << 30
