package grpcfast

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
)

// split cuts b into frame-sized buffers, as the transport delivers it.
func split(b []byte) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 16<<10)
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	return s
}

func TestCodecRoundTrip(t *testing.T) {
	for _, size := range []int{0, 100, aliasMin - 1, aliasMin, 70 << 10, 4 << 20} {
		data := bytes.Repeat([]byte{0xa5, 1, 2}, size/3+1)[:size]
		for _, msg := range []proto.Message{
			&chunkbridgev1.DownloadChunksResponse{Id: "x", Code: 3, Message: "m", Data: data, Size: 9, Encoding: chunkbridgev1.Encoding_ENCODING_ZSTD, Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256},
			&chunkbridgev1.UploadChunksRequest{Id: "y", Data: data, Encoding: chunkbridgev1.Encoding_ENCODING_RAW},
			&chunkbridgev1.StatChunkRequest{Id: string(bytes.Repeat([]byte("a"), size))},
		} {
			out, err := Codec{}.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			wire := out.Materialize()
			// What we send is what any proto decoder reads back.
			plain := msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(wire, plain); err != nil || !proto.Equal(plain, msg) {
				t.Fatalf("%T %d bytes: plain decode %v, equal %v", msg, size, err, proto.Equal(plain, msg))
			}
			got := msg.ProtoReflect().New().Interface()
			if err := (Codec{}).Unmarshal(split(wire), got); err != nil || !proto.Equal(got, msg) {
				t.Fatalf("%T %d bytes: codec decode %v, equal %v", msg, size, err, proto.Equal(got, msg))
			}
		}
	}
}

// Fields in any order, repeated data (the last wins) and unknown fields
// decode as proto does.
func TestUnmarshalAliasedWire(t *testing.T) {
	big := bytes.Repeat([]byte{7}, aliasMin)
	var wire []byte
	wire = protowire.AppendTag(wire, 5, protowire.BytesType)
	wire = protowire.AppendBytes(wire, []byte("first"))
	wire = protowire.AppendTag(wire, 99, protowire.VarintType)
	wire = protowire.AppendVarint(wire, 42)
	wire = protowire.AppendTag(wire, 5, protowire.BytesType)
	wire = protowire.AppendBytes(wire, big)
	wire = protowire.AppendTag(wire, 1, protowire.BytesType)
	wire = protowire.AppendBytes(wire, []byte("id"))
	want := &chunkbridgev1.DownloadChunksResponse{}
	if err := proto.Unmarshal(wire, want); err != nil {
		t.Fatal(err)
	}
	got := &chunkbridgev1.DownloadChunksResponse{}
	if err := (Codec{}).Unmarshal(split(wire), got); err != nil || !proto.Equal(got, want) {
		t.Fatalf("err %v, equal %v", err, proto.Equal(got, want))
	}
	if err := (Codec{}).Unmarshal(split(append(wire, 0x2a)), got); err == nil {
		t.Fatal("a truncated field decoded")
	}
}

func TestPool(t *testing.T) {
	for _, size := range []int{1, 256, 257, 68 << 10, 1 << 20, 16<<20 + 1<<19, 40 << 20} {
		b := Pool.Get(size)
		if len(*b) != size || cap(*b) >= 2*size+512 {
			t.Fatalf("Get(%d): len %d cap %d", size, len(*b), cap(*b))
		}
		Pool.Put(b)
	}
	odd := make([]byte, 1000)
	Pool.Put(&odd) // not a tier size: dropped
	if b := Pool.Get(1000); cap(*b) != 1024 {
		t.Fatalf("Get(1000) cap %d", cap(*b))
	}
}

// A Lent response goes out as the proto any decoder reads, and comes back
// as Received (the pooled path of both ends) equal to it; the buffers
// are the pool's and return to it when freed.
func TestLentAndReceived(t *testing.T) {
	for _, size := range []int{0, 100, aliasMin - 1, aliasMin, 70 << 10, 4 << 20} {
		buf := Pool.Get(size)
		for i := range *buf {
			(*buf)[i] = byte(i * 7)
		}
		want := &chunkbridgev1.ReadChunksResponse{Tag: 9, Data: bytes.Clone(*buf)}
		out, err := Codec{}.Marshal(&Lent{Resp: &chunkbridgev1.ReadChunksResponse{Tag: 9, Data: *buf}, Buf: buf})
		if err != nil {
			t.Fatal(err)
		}
		wire := out.Materialize()
		plain := new(chunkbridgev1.ReadChunksResponse)
		if err := proto.Unmarshal(wire, plain); err != nil || !proto.Equal(plain, want) {
			t.Fatalf("%d bytes: plain decode %v, equal %v", size, err, proto.Equal(plain, want))
		}
		out.Free() // as gRPC does once the message is written
		var got Received
		if err := (Codec{}).Unmarshal(split(wire), &got); err != nil || !proto.Equal(got.Resp, want) {
			t.Fatalf("%d bytes: Received decode %v, equal %v", size, err, proto.Equal(got.Resp, want))
		}
		if (got.buf != nil) != (len(wire) >= aliasMin) {
			t.Fatalf("%d bytes: pooled %v, want pooled from a %d-byte message", size, got.buf != nil, aliasMin)
		}
		got.Free()
		got.Free() // twice is harmless
	}
}
