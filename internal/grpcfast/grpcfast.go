// Package grpcfast trims the copies and the memory clearing that gRPC adds
// to each chunk. Chunks are 64 KiB to 16 MiB messages, and grpc-go's
// defaults are tuned for small ones:
//
//   - its default buffer pool has a 1 MiB tier and nothing between 32 KiB
//     and 1 MiB, and clears every buffer it hands out, so each 68 KB chunk
//     message cost a 1 MiB memclr on both sides of every hop;
//   - its proto codec marshals a message into a pooled buffer (a copy of the
//     chunk) and unmarshals by gathering the frames into a pooled buffer and
//     then copying the bytes field out of it (two copies).
//
// Install replaces both, process-wide, from an init function.
package grpcfast

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
)

// Install makes Pool gRPC's default buffer pool and Codec its "proto"
// codec. Call it from an init function only: gRPC reads both without
// locking.
func Install() {
	experimental.SetDefaultBufferPool(Pool)
	encoding.RegisterCodecV2(Codec{})
	installed.Store(true)
}

var installed atomic.Bool

// Installed reports whether Install ran: only then does RecvMsg take a
// *Received.
func Installed() bool { return installed.Load() }

// Pool is a buffer pool with a tier for every power of two from 256 bytes
// to 32 MiB, so a buffer is never more than twice its request, and does not
// clear buffers: gRPC overwrites the requested length in full before it
// reads any of it (a marshal of exactly that size, or a read of exactly
// that many bytes), and never reads past it.
var Pool mem.BufferPool = &tiered{}

const minTier, maxTier = 8, 25

type tiered struct {
	pools [maxTier + 1]sync.Pool
}

// tier is the smallest power of two that holds size.
func tier(size int) int {
	if size <= 1<<minTier {
		return minTier
	}
	return bits.Len(uint(size - 1))
}

func (t *tiered) Get(size int) *[]byte {
	k := tier(size)
	if k > maxTier {
		b := make([]byte, size)
		return &b
	}
	if b, ok := t.pools[k].Get().(*[]byte); ok {
		*b = (*b)[:size]
		return b
	}
	b := make([]byte, size, 1<<k)
	return &b
}

func (t *tiered) Put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minTier || c&(c-1) != 0 || bits.Len(uint(c))-1 > maxTier {
		return // not one of ours
	}
	t.pools[bits.Len(uint(c))-1].Put(b)
}

// aliasMin is the message size from which Unmarshal aliases a bytes field
// named "data" instead of copying it; below it gRPC's way is as cheap.
const aliasMin = 16 << 10

// Codec is gRPC's proto codec with two chunk-sized shortcuts:
//
//   - Marshal sends a DownloadChunksResponse's or ReadChunksResponse's data
//     as its own buffer instead of copying it into the marshalled message.
//     gRPC's contract already forbids changing a message after SendMsg; the
//     chunk service sends freshly read buffers it never touches again. Other messages,
//     whose senders may reuse their buffers, are copied as before (the
//     PMXBCKUP gateway may release an upload's buffer to pmxproto.Reader
//     for the next packet as soon as SendMsg returns).
//   - Unmarshal of a large message with a bytes field named "data" gathers
//     the received frames into one new buffer and points the field into it,
//     instead of gathering into a pooled buffer and copying the field out.
//   - For ReadChunks, the hot path of HTTP GETs, both ends use the pool: the
//     chunk service sends a Lent (its data a pooled buffer that gRPC gives
//     back once written) and the client receives into a Received (a pooled
//     buffer the caller frees when done), so no chunk costs an allocation
//     and its garbage collection on either side.
type Codec struct{}

// Name replaces the registered "proto" codec.
func (Codec) Name() string { return "proto" }

var (
	downloadData = (&chunkbridgev1.DownloadChunksResponse{}).ProtoReflect().Descriptor().Fields().ByName("data")
	readData     = (&chunkbridgev1.ReadChunksResponse{}).ProtoReflect().Descriptor().Fields().ByName("data")
)

// Lent is a ReadChunksResponse whose data is Buf, a buffer from Pool that
// gRPC gives back once it has written the message. Send it with Send (a
// stream's SendMsg); after that neither Resp's data nor Buf may be
// touched. A Lent that is never sent leaves Buf to the garbage collector.
type Lent struct {
	Resp *chunkbridgev1.ReadChunksResponse
	Buf  *[]byte // nil: Resp's data is not the pool's
}

// Send sends l on stream.
func (l *Lent) Send(stream interface{ SendMsg(any) error }) error {
	if l.Buf == nil || !Installed() {
		return stream.SendMsg(l.Resp)
	}
	return stream.SendMsg(l)
}

func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	switch r := v.(type) {
	case *Lent:
		b, err := marshalSent(r.Resp, readData)
		if err != nil || len(b) < 2 {
			// Not sent or copied (small): the buffer is free again.
			Pool.Put(r.Buf)
			return b, err
		}
		// The data goes as the pool's buffer, back once written.
		b[1] = mem.NewBuffer(r.Buf, Pool)
		return b, nil
	case *chunkbridgev1.DownloadChunksResponse:
		return marshalSent(r, downloadData)
	case *chunkbridgev1.ReadChunksResponse:
		// The chunk service's ReadChunks sends freshly read buffers too.
		return marshalSent(r, readData)
	}
	return marshal(v)
}

// marshalSent marshals everything of r but its data field, then the data
// field's tag and length, and passes the data on as its own buffer: fields
// may come in any order on the wire. Data shorter than aliasMin is copied
// as any message's.
func marshalSent(r proto.Message, dataField protoreflect.FieldDescriptor) (mem.BufferSlice, error) {
	m := r.ProtoReflect()
	data := m.Get(dataField).Bytes()
	if len(data) < aliasMin {
		return marshal(r)
	}
	head := m.New()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd != dataField {
			head.Set(fd, v)
		}
		return true
	})
	b, err := proto.MarshalOptions{}.Marshal(head.Interface())
	if err != nil {
		return nil, err
	}
	b = protowire.AppendTag(b, dataField.Number(), protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(data)))
	return mem.BufferSlice{mem.SliceBuffer(b), mem.SliceBuffer(data)}, nil
}

// marshal is gRPC's own proto codec marshal, on the pool.
func marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("proto: failed to marshal, message is %T, want proto.Message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // the size was just computed
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	buf := Pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		Pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, Pool)}, nil
}

// Received is a ReadChunksResponse received into a pooled buffer: pass it
// to a stream's RecvMsg, use Resp (its data points into the buffer), then
// Free it, after which the data must not be touched. One never freed is
// left to the garbage collector, as any buffer.
type Received struct {
	Resp *chunkbridgev1.ReadChunksResponse
	buf  mem.Buffer
}

// Free gives the buffer behind Resp's data back to the pool.
func (r *Received) Free() {
	if r.buf != nil {
		r.buf.Free()
		r.buf = nil
	}
}

func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*Received); ok {
		if r.Resp == nil {
			r.Resp = new(chunkbridgev1.ReadChunksResponse)
		}
		if data.Len() < aliasMin {
			return Codec{}.Unmarshal(data, r.Resp)
		}
		// Gathered into a pooled buffer (or, from a single frame, that
		// frame's buffer with one more reference), which Resp's data
		// points into until Free.
		buf := data.MaterializeToBuffer(Pool)
		if err := unmarshalAliased(buf.ReadOnlyData(), r.Resp, readData); err != nil {
			buf.Free()
			return err
		}
		r.buf = buf
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("proto: failed to unmarshal, message is %T, want proto.Message", v)
	}
	if data.Len() >= aliasMin {
		if fd := m.ProtoReflect().Descriptor().Fields().ByName("data"); fd != nil && fd.Kind() == protoreflect.BytesKind && fd.Cardinality() != protoreflect.Repeated {
			return unmarshalAliased(data.Materialize(), m, fd)
		}
	}
	buf := data.MaterializeToBuffer(Pool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// unmarshalAliased unmarshals b into m with fd pointing into b: the other
// fields are unmarshalled as usual, from a copy without fd.
func unmarshalAliased(b []byte, m proto.Message, fd protoreflect.FieldDescriptor) error {
	var rest []byte
	var field []byte
	found := false
	for in := b; len(in) > 0; {
		num, typ, n := protowire.ConsumeTag(in)
		if n < 0 {
			return fmt.Errorf("proto: cannot parse message: %w", protowire.ParseError(n))
		}
		l := protowire.ConsumeFieldValue(num, typ, in[n:])
		if l < 0 {
			return fmt.Errorf("proto: cannot parse message: %w", protowire.ParseError(l))
		}
		if num == fd.Number() && typ == protowire.BytesType {
			field, _ = protowire.ConsumeBytes(in[n:]) // the last one wins, as in proto
			found = true
		} else {
			rest = append(rest, in[:n+l]...)
		}
		in = in[n+l:]
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	if found && len(field) > 0 {
		m.ProtoReflect().Set(fd, protoreflect.ValueOfBytes(field[:len(field):len(field)]))
	}
	return nil
}
