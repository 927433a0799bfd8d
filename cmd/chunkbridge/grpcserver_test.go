package main

import (
	be "encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The gRPC server tells each connection how many streams it may open at
// once: its first frame, SETTINGS, carries MAX_CONCURRENT_STREAMS.
func TestGRPCServerCapsStreamsPerConnection(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	srv, _ := newGRPCServer(log, prometheus.NewRegistry(), &access{log: log}, nil, 7)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The client preface, then an empty SETTINGS frame.
	if _, err := io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	var head [9]byte // length (3), type, flags, stream id (4)
	if _, err := io.ReadFull(conn, head[:]); err != nil {
		t.Fatal(err)
	}
	if head[3] != 0x4 {
		t.Fatalf("first frame of type %d, want SETTINGS (4)", head[3])
	}
	payload := make([]byte, int(head[0])<<16|int(head[1])<<8|int(head[2]))
	if _, err := io.ReadFull(conn, payload); err != nil {
		t.Fatal(err)
	}
	for p := payload; len(p) >= 6; p = p[6:] {
		if be.BigEndian.Uint16(p) == 0x3 { // SETTINGS_MAX_CONCURRENT_STREAMS
			if v := be.BigEndian.Uint32(p[2:]); v != 7 {
				t.Fatalf("MAX_CONCURRENT_STREAMS = %d, want 7", v)
			}
			return
		}
	}
	t.Fatalf("SETTINGS %x without MAX_CONCURRENT_STREAMS: streams per connection are not capped", payload)
}
