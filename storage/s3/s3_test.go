package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/s3"
	"github.com/chunkbridge/chunkbridge/storage/s3/miniotest"
	"github.com/chunkbridge/chunkbridge/storage/storagetest"
)

func TestMain(m *testing.M) { os.Exit(miniotest.RunMain(m)) }

func open(t *testing.T, cfg s3.Config) *s3.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := s3.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	srv := miniotest.Shared(t)
	storagetest.Run(t, func(t *testing.T) storage.Store { return open(t, srv.Config()) })
}

// The same suite under a key prefix, as with --store s3://bucket/prefix.
func TestConformanceWithPrefix(t *testing.T) {
	srv := miniotest.Shared(t)
	storagetest.Run(t, func(t *testing.T) storage.Store {
		cfg := srv.Config()
		cfg.Prefix = "tenant/a"
		return open(t, cfg)
	})
}

// The same suite on a 4-node erasure-coded MinIO, whole and with one node
// killed: conditional writes and listings then go through distributed
// locks and quorums, and must keep the contract with a node missing.
func TestConformanceOnCluster(t *testing.T) {
	c := miniotest.StartCluster(t)
	newStore := func(t *testing.T) storage.Store { return open(t, c.Config()) }
	t.Run("healthy", func(t *testing.T) { storagetest.Run(t, newStore) })

	// An object written while the node is down reads back through that
	// node once it is back.
	cfg := c.Config()
	s := open(t, cfg)
	c.Kill(3)
	t.Run("one node down", func(t *testing.T) { storagetest.Run(t, newStore) })
	want := []byte("written with a node down")
	if _, err := s.PutIfAbsent(t.Context(), "k", bytes.NewReader(want), int64(len(want)), nil); err != nil {
		t.Fatalf("PutIfAbsent with a node down: %v", err)
	}
	if err := c.Restart(3); err != nil {
		t.Fatal(err)
	}
	cfg.Endpoint = c.Nodes[3].Endpoint
	// A restarted node may answer before it has reconnected to every
	// peer (under load, a few seconds): then it does not see the object
	// yet. Wait for that, not for a fixed time; it must come.
	restarted := open(t, cfg)
	deadline := time.Now().Add(time.Minute)
	for {
		rc, _, err := restarted.Get(t.Context(), "k")
		if err == nil {
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read through the restarted node: %q, %v; want %q", got, err, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get through the restarted node, a minute after its restart: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// cancelAtEOF cancels a context once its body has been read whole: the
// caller gives up while the server commits the PUT.
type cancelAtEOF struct {
	r      io.Reader
	cancel context.CancelFunc
}

func (c *cancelAtEOF) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.cancel()
	}
	return n, err
}

// A PUT whose caller gives up after the body was sent completes: aborting
// it mid-commit left objects on too few drives of an erasure-coded MinIO
// (TestMinIONodeDiesDuringBackups in cmd/chunkbridge lost chunks that way).
func TestPutOutlivesItsCaller(t *testing.T) {
	s := open(t, miniotest.Shared(t).Config())
	data := bytes.Repeat([]byte("x"), 100_000)
	ctx, cancel := context.WithCancel(t.Context())
	created, err := s.PutIfAbsent(ctx, "a", &cancelAtEOF{bytes.NewReader(data), cancel}, int64(len(data)), nil)
	if err != nil || !created {
		t.Fatalf("PutIfAbsent cancelled once its body was sent = %v, %v; want created", created, err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	if err := s.Put(ctx, "b", &cancelAtEOF{bytes.NewReader(data), cancel}, int64(len(data)), nil); err != nil {
		t.Fatalf("Put cancelled once its body was sent = %v", err)
	}
	for _, k := range []string{"a", "b"} {
		if info, err := s.Stat(t.Context(), k); err != nil || info.Size != int64(len(data)) {
			t.Fatalf("Stat(%s) = %+v, %v; want the whole object", k, info, err)
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct{ in, bucket, prefix string }{
		{"s3://b", "b", ""},
		{"s3://b/", "b", ""},
		{"s3://b/p/q", "b", "p/q"},
	} {
		b, p, err := s3.ParseURL(tc.in)
		if err != nil || b != tc.bucket || p != tc.prefix {
			t.Errorf("ParseURL(%q) = %q, %q, %v", tc.in, b, p, err)
		}
	}
	for _, in := range []string{"s3:///x", "http://b", "s3://b/../x"} {
		if _, _, err := s3.ParseURL(in); err == nil {
			t.Errorf("ParseURL(%q) succeeded", in)
		}
	}
}

func TestWrongCredentials(t *testing.T) {
	cfg := miniotest.Shared(t).Config()
	cfg.SecretKey = "wrong"
	_, err := s3.Open(t.Context(), cfg)
	if !errors.Is(err, storage.ErrPermission) {
		t.Fatalf("Open with a wrong secret = %v, want ErrPermission", err)
	}
}

// A stopped server is ErrUnavailable, never NotFound, and the store works
// again once the server is back.
func TestOutage(t *testing.T) {
	srv := miniotest.Start(t)
	s := open(t, srv.Config())
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Stat while MinIO is down = %v, want ErrUnavailable", err)
	}
	if _, err := s.PutIfAbsent(ctx, "k", nil, 0, nil); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("PutIfAbsent while MinIO is down = %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after restart = %v, want ErrNotFound", err)
	}
}

// MinIO returns user metadata in listings, which spares a HEAD per chunk
// when counting logical bytes.
func TestListWithMetadataOnMinIO(t *testing.T) {
	s := open(t, miniotest.Shared(t).Config())
	if _, err := s.PutIfAbsent(t.Context(), "m/k", strings.NewReader("data"), 4, storage.Metadata{"size": "99", "algorithm": "sha256"}); err != nil {
		t.Fatal(err)
	}
	var got storage.Metadata
	if err := s.ListWithMetadata(t.Context(), "m/", func(i storage.Info) error { got = i.Metadata; return nil }); err != nil {
		t.Fatal(err)
	}
	if got["size"] != "99" || got["algorithm"] != "sha256" {
		t.Fatalf("listed metadata = %v, want size 99 and algorithm sha256", got)
	}
}

// cancellingProxy forwards TCP to MinIO and calls cancel as soon as it has
// seen a request line starting with method: the client's context then
// ends while its request is on the wire.
func cancellingProxy(t *testing.T, target, method string, cancel context.CancelFunc) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(c, up)
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if bytes.HasPrefix(buf[:n], []byte(method+" ")) {
							cancel()
						}
						up.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// A delete whose caller gives up while the request is on the wire
// completes, as a PUT does: aborted, it could leave an erasure-coded
// object on fewer drives than its quorum.
func TestDeleteOutlivesItsCaller(t *testing.T) {
	srv := miniotest.Shared(t)
	cfg := srv.Config()
	direct := open(t, cfg)
	var keys []string
	for i := range 20 {
		k := "del/" + strconv.Itoa(i)
		if err := direct.Put(t.Context(), k, strings.NewReader("x"), 1, nil); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	for _, tc := range []struct {
		method string
		del    func(ctx context.Context, s *s3.Store) error
		keys   []string
	}{
		{"DELETE", func(ctx context.Context, s *s3.Store) error { return s.Delete(ctx, keys[0]) }, keys[:1]},
		{"POST", func(ctx context.Context, s *s3.Store) error { return s.DeleteBatch(ctx, keys[1:]) }, keys[1:]},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		pcfg := cfg
		pcfg.Endpoint = cancellingProxy(t, srv.Endpoint, tc.method, cancel)
		if err := tc.del(ctx, open(t, pcfg)); err != nil {
			t.Fatalf("%s cancelled on the wire: %v; want it completed", tc.method, err)
		}
		if ctx.Err() == nil {
			t.Fatalf("%s: the proxy did not cancel the caller", tc.method)
		}
		for _, k := range tc.keys {
			if _, err := direct.Stat(t.Context(), k); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("%s: %s is still there (%v)", tc.method, k, err)
			}
		}
	}
}
