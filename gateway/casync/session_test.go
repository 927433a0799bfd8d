package casync_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	cbclient "github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format"
	"github.com/chunkbridge/chunkbridge/format/caindex"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/servicetest"
	"github.com/chunkbridge/chunkbridge/storage/memory"
)

// harness runs the chunk service and catalog on a memory store behind a
// real TCP casync gateway.
type harness struct {
	addr    string
	srv     *casync.Server
	chunks  *cbclient.Chunks
	catalog chunkbridgev1.CatalogServiceClient
	// token, if set, is sent in a version 2 preamble by dial.
	token string
}

// transport is how the gateway reaches the chunk service: the typed
// client over gRPC, or by direct calls in this process (`serve all`).
type transport struct {
	name string
	open func(*servicetest.Services) *cbclient.Chunks
}

var transports = []transport{
	{"grpc", func(s *servicetest.Services) *cbclient.Chunks { return cbclient.NewGRPC(s.Conn) }},
	{"local", func(s *servicetest.Services) *cbclient.Chunks { return cbclient.NewLocal(s.Chunks, 0) }},
}

// onBoth runs test once on each transport: the gateway must not be able
// to tell them apart.
func onBoth(t *testing.T, test func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { test(t, tr) })
	}
}

func newHarness(t *testing.T) *harness { return newHarnessOn(t, transports[0], nil) }

// newHarnessWith lets configure set the gateway's limits before it serves.
func newHarnessWith(t *testing.T, configure func(*casync.Server)) *harness {
	return newHarnessOn(t, transports[0], configure)
}

// newHarnessOn is newHarnessWith on the transport tr.
func newHarnessOn(t *testing.T, tr transport, configure func(*casync.Server)) *harness {
	t.Helper()
	svcs := servicetest.Start(t, memory.New(), chunk.Config{}, catalog.Config{})
	h := &casync.Handler{
		Chunks:       tr.open(svcs),
		Catalog:      cbclient.NewCatalogGRPC(svcs.Conn),
		DrainTimeout: 2 * time.Second,
	}
	srv := &casync.Server{Handler: h}
	if configure != nil {
		configure(srv)
	}
	addr := servicetest.Serve(t, srv)
	return &harness{addr: addr, srv: srv, chunks: h.Chunks, catalog: svcs.CatalogClient()}
}

// client is a caprotocol peer in the test.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *caproto.Reader
}

func (h *harness) dial(t *testing.T, words ...string) *client {
	t.Helper()
	write := casync.WritePreamble
	if h.token != "" {
		write = func(w io.Writer, words []string) error { return casync.WritePreamble2(w, h.token, words) }
	}
	return h.dialWith(t, write, words)
}

// dialWith connects and sends the preamble write writes for words.
func (h *harness) dialWith(t *testing.T, write func(io.Writer, []string) error, words []string) *client {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := write(c, append([]string{"casync"}, words...)); err != nil {
		t.Fatal(err)
	}
	return &client{t: t, conn: c, r: caproto.NewReader(c, 0)}
}

func (c *client) send(msgs ...caproto.Message) {
	c.t.Helper()
	var b []byte
	for _, m := range msgs {
		b = m.Encode(b)
	}
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next reads one message, failing on error.
func (c *client) next() caproto.Message {
	c.t.Helper()
	m, err := c.r.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// expectAbort reads until ABORT and checks its errno.
func (c *client) expectAbort(errno syscall.Errno, contains string) {
	c.t.Helper()
	for {
		m, err := c.r.ReadMessage()
		if err != nil {
			c.t.Fatalf("want ABORT(%d), got %v", errno, err)
		}
		if a, ok := m.(*caproto.Abort); ok {
			if a.Errno != uint32(errno) || !strings.Contains(a.Reason, contains) {
				c.t.Fatalf("ABORT(%d, %q), want errno %d mentioning %q", a.Errno, a.Reason, errno, contains)
			}
			return
		}
	}
}

type testChunk struct {
	id   [32]byte
	data []byte
}

func makeChunks(n int) []testChunk {
	out := make([]testChunk, n)
	for i := range out {
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 'x'}, 1000+i)
		out[i] = testChunk{id: sha256.Sum256(data), data: data}
	}
	return out
}

func indexBytes(t *testing.T, chunks []testChunk) []byte {
	t.Helper()
	h, err := caindex.BlobHeader(caindex.SHA256, 1024, 4096, 16384)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	w, err := caindex.NewWriter(&b, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if err := w.Add(c.id, uint64(len(c.data))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

const pushFlags = caproto.PushIndex | caproto.PushChunks | caproto.PushIndexChunks

// push runs a whole push session the way casync make does and expects
// GOODBYE.
func (h *harness) push(t *testing.T, name string, chunks []testChunk) {
	t.Helper()
	c := h.dial(t, "push", "-", "-", name, "/default.castr")
	c.send(&caproto.Hello{Features: pushFlags})
	idx := indexBytes(t, chunks)
	for len(idx) > 0 {
		n := min(len(idx), 1000) // pieces that do not line up with table items
		c.send(&caproto.Index{Data: idx[:n]})
		idx = idx[n:]
	}
	c.send(&caproto.IndexEOF{})
	byID := map[[32]byte][]byte{}
	for _, ch := range chunks {
		byID[ch.id] = ch.data
	}
	enc, _ := zstd.NewWriter(nil)
	if _, ok := c.next().(*caproto.Hello); !ok {
		t.Fatal("no HELLO first")
	}
	for {
		switch m := c.next().(type) {
		case *caproto.Request:
			for _, id := range m.IDs {
				c.send(&caproto.Chunk{Flags: caproto.ChunkCompressed, ID: id, Data: enc.EncodeAll(byID[id], nil)})
			}
		case *caproto.Goodbye:
			return
		default:
			t.Fatalf("push: unexpected %s", m.Type())
		}
	}
}

func (h *harness) indexExists(t *testing.T, name string) bool {
	t.Helper()
	_, err := h.catalog.StatIndex(t.Context(), &chunkbridgev1.StatIndexRequest{Name: name})
	if status.Code(err) == codes.NotFound {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func TestPushThenPull(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		h := newHarnessOn(t, tr, nil)
		chunks := makeChunks(50)
		chunks = append(chunks, chunks[3]) // a repeated chunk is requested once
		h.push(t, "/images/a.caibx", chunks)

		c := h.dial(t, "pull", "-", "-", "/images/a.caibx", "/default.castr")
		c.send(&caproto.Hello{Features: caproto.PullIndex | caproto.PullChunks})
		missing := sha256.Sum256([]byte("never stored"))
		var ids [][32]byte
		for _, ch := range chunks[:50] {
			ids = append(ids, ch.id)
		}
		c.send(&caproto.Request{IDs: ids}, &caproto.Request{Flags: caproto.RequestHighPriority, IDs: [][32]byte{missing}})
		var index []byte
		got := map[[32]byte]bool{}
		sawMissing, sawEOF := false, false
		dec, _ := zstd.NewReader(nil)
		if _, ok := c.next().(*caproto.Hello); !ok {
			t.Fatal("no HELLO first")
		}
		for len(got) < 50 || !sawMissing || !sawEOF {
			switch m := c.next().(type) {
			case *caproto.Index:
				index = append(index, m.Data...)
			case *caproto.IndexEOF:
				sawEOF = true
			case *caproto.Chunk:
				data, err := dec.DecodeAll(m.Data, nil)
				if err != nil || sha256.Sum256(data) != m.ID || !m.Compressed() {
					t.Fatalf("CHUNK %x does not decode to its id", m.ID)
				}
				if got[m.ID] {
					t.Fatalf("CHUNK %x sent twice", m.ID)
				}
				got[m.ID] = true
			case *caproto.Missing:
				if m.ID != missing {
					t.Fatalf("MISSING for a stored chunk %x", m.ID)
				}
				sawMissing = true
			default:
				t.Fatalf("pull: unexpected %s", m.Type())
			}
		}
		if !bytes.Equal(index, indexBytes(t, chunks)) {
			t.Fatal("pulled index differs from the pushed one")
		}
		// The client ends a pull by closing; the gateway closes too.
		c.conn.(*net.TCPConn).CloseWrite()
		if _, err := c.r.ReadMessage(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the client closed: %v, want EOF", err)
		}
	})
}

func TestBadInputAborts(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		h := newHarnessOn(t, tr, nil)
		good := makeChunks(5)
		pull := []string{"pull", "-", "-", "/x.caibx", "/s.castr"}
		cases := []struct {
			name  string
			words []string
			run   func(c *client)
			errno syscall.Errno
			says  string
		}{
			{"frame before HELLO", pull, func(c *client) { c.send(&caproto.IndexEOF{}) }, syscall.EBADMSG, "HELLO"},
			{"incompatible HELLO", pull, func(c *client) { c.send(&caproto.Hello{Features: caproto.PushChunks}) }, syscall.EBADE, ""},
			{"unknown feature bits", pull, func(c *client) {
				b := (&caproto.Hello{Features: 1}).Encode(nil)
				b[16+1] = 0x40 // bit 14
				c.sendRaw(b)
			}, syscall.EPROTONOSUPPORT, ""},
			{"frame larger than 16 MiB", pull, func(c *client) {
				b := (&caproto.Hello{Features: caproto.PullChunks}).Encode(nil)
				b[3] = 0x02 // size 32 MiB + 24
				c.sendRaw(b)
			}, syscall.EBADMSG, ""},
			{"missing index", pull, func(c *client) { c.send(&caproto.Hello{Features: caproto.PullIndex | caproto.PullChunks}) }, syscall.ENOENT, "x.caibx"},
			{"archive", []string{"pull", "-", "/t.catar", "-", "-"}, func(c *client) {}, syscall.EOPNOTSUPP, "archive"},
			{"index name with ..", []string{"push", "-", "-", "/a/../../etc.caibx", "/s.castr"}, func(c *client) {
				c.send(&caproto.Hello{Features: pushFlags})
			}, syscall.EINVAL, ".."},
			{"writing under snapshots/", []string{"push", "-", "-", "/snapshots/host/x.caibx", "/s.castr"}, func(c *client) {
				c.send(&caproto.Hello{Features: pushFlags})
			}, syscall.EINVAL, "reserved"},
			{"truncated index", []string{"push", "-", "-", "/t1.caibx", "/s.castr"}, func(c *client) {
				idx := indexBytes(t, good)
				c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: idx[:len(idx)-50]}, &caproto.IndexEOF{})
			}, syscall.EBADMSG, "index"},
			{"table out of order", []string{"push", "-", "-", "/t2.caibx", "/s.castr"}, func(c *client) {
				idx := indexBytes(t, good)
				// Swap the end offsets of the first two table items (each item
				// is end u64 + id; the table starts after 48+16 bytes).
				a, b := 64, 64+40
				tmp := append([]byte(nil), idx[a:a+8]...)
				copy(idx[a:a+8], idx[b:b+8])
				copy(idx[b:b+8], tmp)
				c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: idx}, &caproto.IndexEOF{})
			}, syscall.EBADMSG, "index"},
			{"chunk that does not hash to its id", []string{"push", "-", "-", "/t3.caibx", "/s.castr"}, func(c *client) {
				c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: indexBytes(t, good)}, &caproto.IndexEOF{})
				for {
					if r, ok := c.next().(*caproto.Request); ok {
						c.send(&caproto.Chunk{ID: r.IDs[0], Data: []byte("not this chunk")})
						return
					}
				}
			}, syscall.EBADMSG, "hashes to"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := h.dial(t, tc.words...)
				c.t = t
				tc.run(c)
				c.expectAbort(tc.errno, tc.says)
			})
		}
		for _, name := range []string{"t1.caibx", "t2.caibx", "t3.caibx", "etc.caibx"} {
			if h.indexExists(t, name) {
				t.Errorf("a refused push left index %s visible", name)
			}
		}
		// The gateway still serves others.
		h.push(t, "/after.caibx", good)
		if !h.indexExists(t, "after.caibx") {
			t.Fatal("a good push after bad ones published nothing")
		}
	})
}

// A client that disconnects in the middle of a push leaves no index.
func TestPushDisconnectLeavesNoIndex(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		h := newHarnessOn(t, tr, nil)
		chunks := makeChunks(20)
		c := h.dial(t, "push", "-", "-", "/half.caibx", "/s.castr")
		c.send(&caproto.Hello{Features: pushFlags}, &caproto.Index{Data: indexBytes(t, chunks)}, &caproto.IndexEOF{})
		enc, _ := zstd.NewWriter(nil)
		for {
			if r, ok := c.next().(*caproto.Request); ok {
				// Send half of what was asked for, then go away.
				for _, ch := range chunks[:len(r.IDs)/2] {
					c.send(&caproto.Chunk{Flags: caproto.ChunkCompressed, ID: ch.id, Data: enc.EncodeAll(ch.data, nil)})
				}
				break
			}
		}
		c.conn.Close()
		// The same push completed by another client works, and only then is
		// the index there.
		if h.indexExists(t, "half.caibx") {
			t.Fatal("index visible after the client disconnected mid-push")
		}
		h.push(t, "/half.caibx", chunks)
		if !h.indexExists(t, "half.caibx") {
			t.Fatal("index missing after a complete push")
		}
	})
}

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want casync.Args
		err  bool
	}{
		{in: "pull - - /x.caibx /s.castr", want: casync.Args{Index: "/x.caibx", Store: "/s.castr"}},
		{in: "--log-level=7 --rate-limit-bps=100 push - - /x.caibx -", want: casync.Args{Push: true, Index: "/x.caibx", Options: []string{"--log-level=7", "--rate-limit-bps=100"}}},
		{in: "pull - /a.catar - -", want: casync.Args{Archive: "/a.catar"}},
		{in: "pull /base - /x.caibx -", err: true},
		{in: "fetch - - - -", err: true},
		{in: "pull - -", err: true},
	} {
		got, err := casync.ParseArgs(strings.Fields(tc.in))
		if (err != nil) != tc.err {
			t.Errorf("ParseArgs(%q) error = %v", tc.in, err)
			continue
		}
		if !tc.err && (got.Push != tc.want.Push || got.Index != tc.want.Index || got.Store != tc.want.Store || got.Archive != tc.want.Archive || len(got.Options) != len(tc.want.Options)) {
			t.Errorf("ParseArgs(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// A chunk of format.MaxChunk incompressible bytes is stored as a zstd
// frame of raw blocks, a few hundred bytes larger than its data and than a
// CHUNK frame holds. The pull sends it uncompressed instead of failing;
// other chunks still go as stored.
func TestPullChunkStoredLargerThanAFrame(t *testing.T) {
	onBoth(t, func(t *testing.T, tr transport) {
		h := newHarnessOn(t, tr, nil)
		big := make([]byte, format.MaxChunk)
		rand.NewChaCha8([32]byte{7}).Read(big)
		small := bytes.Repeat([]byte("small "), 1000)
		bigID, smallID := sha256.Sum256(big), sha256.Sum256(small)
		u, err := h.chunks.NewUploader(t.Context(), cbclient.UploadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range [][]byte{big, small} {
			up := cbclient.Upload{ID: sha256.Sum256(data), Algorithm: chunkbridgev1.DigestAlgorithm_DIGEST_ALGORITHM_SHA256, Encoding: chunkbridgev1.Encoding_ENCODING_RAW, Data: data}
			if err := u.Put(t.Context(), up, func(r cbclient.Result) {
				if r.Err != nil {
					t.Errorf("storing a %d-byte chunk: %v", len(data), r.Err)
				}
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := u.Close(); err != nil || t.Failed() {
			t.Fatalf("storing the chunks: %v", err)
		}
		info, err := h.chunks.Stat(t.Context(), bigID)
		if err != nil {
			t.Fatal(err)
		}
		if info.GetStoredSize() <= caproto.MaxChunkData {
			t.Fatalf("the big chunk is stored in %d bytes, which fit a CHUNK frame: the test tests nothing", info.GetStoredSize())
		}
		t.Logf("%d bytes of data stored in %d, a CHUNK frame holds %d", len(big), info.GetStoredSize(), caproto.MaxChunkData)

		c := h.dial(t, "pull", "-", "-", "-", "/default.castr")
		c.send(&caproto.Hello{Features: caproto.PullChunks}, &caproto.Request{IDs: [][32]byte{bigID, smallID}})
		if _, ok := c.next().(*caproto.Hello); !ok {
			t.Fatal("no HELLO first")
		}
		dec, _ := zstd.NewReader(nil)
		for range 2 {
			switch m := c.next().(type) {
			case *caproto.Chunk:
				if m.ID == bigID {
					if m.Compressed() || !bytes.Equal(m.Data, big) {
						t.Fatalf("the big chunk: compressed=%v, %d bytes; want its data uncompressed", m.Compressed(), len(m.Data))
					}
					continue
				}
				data, err := dec.DecodeAll(m.Data, nil)
				if m.ID != smallID || !m.Compressed() || err != nil || !bytes.Equal(data, small) {
					t.Fatalf("CHUNK %x: want the small chunk as stored", m.ID)
				}
			default:
				t.Fatalf("got %s, want CHUNK", m.Type())
			}
		}
	})
}
