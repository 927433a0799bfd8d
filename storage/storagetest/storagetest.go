// Package storagetest is the one conformance suite every storage.Store
// implementation passes. Run it from the implementation's tests:
//
//	storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t) })
package storagetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/chunkbridge/chunkbridge/storage"
)

// Run exercises the Store contract. newStore returns an empty store that the
// test may fill; it is called once per subtest.
func Run(t *testing.T, newStore func(t *testing.T) storage.Store) {
	t.Run("PutGetStat", func(t *testing.T) { testPutGetStat(t, newStore(t)) })
	t.Run("EmptyAndLarge", func(t *testing.T) { testEmptyAndLarge(t, newStore(t)) })
	t.Run("PutIfAbsentKeepsFirst", func(t *testing.T) { testPutIfAbsentKeepsFirst(t, newStore(t)) })
	t.Run("ConcurrentPutIfAbsent", func(t *testing.T) { testConcurrentPutIfAbsent(t, newStore(t)) })
	t.Run("PutReplaces", func(t *testing.T) { testPutReplaces(t, newStore(t)) })
	t.Run("Missing", func(t *testing.T) { testMissing(t, newStore(t)) })
	t.Run("Delete", func(t *testing.T) { testDelete(t, newStore(t)) })
	t.Run("InvalidKeys", func(t *testing.T) { testInvalidKeys(t, newStore(t)) })
	t.Run("FailedWriteLeavesNothing", func(t *testing.T) { testFailedWrite(t, newStore(t)) })
	t.Run("ListManyKeys", func(t *testing.T) { testListMany(t, newStore(t)) })
	t.Run("ListOrderAndPrefix", func(t *testing.T) { testListOrder(t, newStore(t)) })
	t.Run("ContextCancellation", func(t *testing.T) { testCancel(t, newStore(t)) })
	t.Run("DeleteBatch", func(t *testing.T) { testDeleteBatch(t, newStore(t)) })
	t.Run("ListWithMetadata", func(t *testing.T) { testListWithMetadata(t, newStore(t)) })
	t.Run("Open", func(t *testing.T) { testOpen(t, newStore(t)) })
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func put(t testing.TB, s storage.Store, key string, data []byte, meta storage.Metadata) {
	t.Helper()
	created, err := s.PutIfAbsent(context.Background(), key, bytes.NewReader(data), int64(len(data)), meta)
	if err != nil {
		t.Fatalf("PutIfAbsent(%s): %v", key, err)
	}
	if !created {
		t.Fatalf("PutIfAbsent(%s) on an empty key: created=false", key)
	}
}

func get(t testing.TB, s storage.Store, key string) ([]byte, storage.Info) {
	t.Helper()
	rc, info, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return data, info
}

func testPutGetStat(t *testing.T, s storage.Store) {
	ctx := context.Background()
	data := random(t, 100_000)
	meta := storage.Metadata{"algorithm": "sha256", "size": "123456"}
	put(t, s, "chunks/abcd/abcdef.cacnk", data, meta)

	got, info := get(t, s, "chunks/abcd/abcdef.cacnk")
	if !bytes.Equal(got, data) {
		t.Fatalf("Get returned %d bytes that differ from the %d put", len(got), len(data))
	}
	if info.Size != int64(len(data)) || info.Key != "chunks/abcd/abcdef.cacnk" {
		t.Fatalf("Get info = %+v", info)
	}
	if info.Metadata["algorithm"] != "sha256" || info.Metadata["size"] != "123456" {
		t.Fatalf("Get metadata = %v, want %v", info.Metadata, meta)
	}
	st, err := s.Stat(ctx, "chunks/abcd/abcdef.cacnk")
	if err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(data)) || st.Metadata["algorithm"] != "sha256" || st.Modified.IsZero() {
		t.Fatalf("Stat = %+v", st)
	}
}

func testEmptyAndLarge(t *testing.T, s storage.Store) {
	put(t, s, "empty", nil, nil)
	if got, info := get(t, s, "empty"); len(got) != 0 || info.Size != 0 {
		t.Fatalf("empty object: %d bytes, size %d", len(got), info.Size)
	}
	large := random(t, 17<<20) // above S3 multipart thresholds
	put(t, s, "large", large, nil)
	if got, _ := get(t, s, "large"); !bytes.Equal(got, large) {
		t.Fatalf("17 MiB object differs after a round trip")
	}
}

func testPutIfAbsentKeepsFirst(t *testing.T, s storage.Store) {
	first, second := []byte("first"), []byte("second!")
	put(t, s, "k", first, storage.Metadata{"v": "1"})
	created, err := s.PutIfAbsent(context.Background(), "k", bytes.NewReader(second), int64(len(second)), storage.Metadata{"v": "2"})
	if err != nil || created {
		t.Fatalf("second PutIfAbsent = %v, %v; want false, nil", created, err)
	}
	got, info := get(t, s, "k")
	if !bytes.Equal(got, first) || info.Metadata["v"] != "1" {
		t.Fatalf("after second PutIfAbsent: %q %v, want the first write", got, info.Metadata)
	}
}

func testConcurrentPutIfAbsent(t *testing.T, s storage.Store) {
	const writers = 16
	payloads := make([][]byte, writers)
	for i := range payloads {
		payloads[i] = random(t, 64<<10)
	}
	var mu sync.Mutex
	var winners []int
	var g errgroup.Group
	start := make(chan struct{})
	for i := range writers {
		g.Go(func() error {
			<-start
			created, err := s.PutIfAbsent(context.Background(), "race/key", bytes.NewReader(payloads[i]), int64(len(payloads[i])), storage.Metadata{"writer": fmt.Sprint(i)})
			if err != nil {
				return fmt.Errorf("writer %d: %w", i, err)
			}
			if created {
				mu.Lock()
				winners = append(winners, i)
				mu.Unlock()
			}
			return nil
		})
	}
	close(start)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(winners) != 1 {
		t.Fatalf("%d writers report created (%v), want exactly 1", len(winners), winners)
	}
	got, info := get(t, s, "race/key")
	if !bytes.Equal(got, payloads[winners[0]]) || info.Metadata["writer"] != fmt.Sprint(winners[0]) {
		t.Fatalf("stored object is not the winner's (writer %d, metadata %v)", winners[0], info.Metadata)
	}
}

func testPutReplaces(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for i, v := range []string{"one", "two-two"} {
		if err := s.Put(ctx, "indexes/x.caibx", bytes.NewReader([]byte(v)), int64(len(v)), storage.Metadata{"n": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	got, info := get(t, s, "indexes/x.caibx")
	if string(got) != "two-two" || info.Metadata["n"] != "1" {
		t.Fatalf("after two Puts: %q %v", got, info.Metadata)
	}
}

func testMissing(t *testing.T, s storage.Store) {
	ctx := context.Background()
	if _, _, err := s.Get(ctx, "no/such/key"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "no/such/key"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat(missing) = %v, want ErrNotFound", err)
	}
	put(t, s, "dir/file", []byte("x"), nil)
	if _, err := s.Stat(ctx, "dir"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat of a key that is only a prefix = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(ctx, "dir/file/below"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat below an object = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "no/such/key"); err != nil {
		t.Fatalf("Delete(missing) = %v, want nil", err)
	}
	n := 0
	if err := s.List(ctx, "nothing-here/", func(storage.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("List(empty prefix) = %d keys, %v", n, err)
	}
}

func testDelete(t *testing.T, s storage.Store) {
	ctx := context.Background()
	put(t, s, "a/b", []byte("x"), nil)
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "a/b"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after Delete = %v", err)
	}
	// The key can be created again.
	put(t, s, "a/b", []byte("y"), nil)
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	ctx := context.Background()
	for _, key := range []string{"", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a\\b", "a\x00b"} {
		if _, err := s.PutIfAbsent(ctx, key, bytes.NewReader(nil), 0, nil); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("PutIfAbsent(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	if err := s.List(ctx, "../", func(storage.Info) error { return nil }); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("List(../) = %v, want ErrInvalidKey", err)
	}
}

// failingReader yields n bytes and then an error, like a client that
// disconnects mid-upload.
type failingReader struct {
	n   int
	err error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

func testFailedWrite(t *testing.T, s storage.Store) {
	ctx := context.Background()
	boom := errors.New("client went away")
	if _, err := s.PutIfAbsent(ctx, "partial/a", &failingReader{n: 40_000, err: boom}, 100_000, nil); err == nil {
		t.Fatal("PutIfAbsent from a failing reader succeeded")
	}
	if err := s.Put(ctx, "partial/b", &failingReader{n: 40_000, err: boom}, 100_000, nil); err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	if _, err := s.PutIfAbsent(ctx, "partial/c", bytes.NewReader(make([]byte, 10)), 20, nil); err == nil {
		t.Fatal("PutIfAbsent with fewer bytes than announced succeeded")
	}
	var keys []string
	if err := s.List(ctx, "", func(i storage.Info) error { keys = append(keys, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Fatalf("failed writes left objects behind: %v", keys)
	}
}

func testListMany(t *testing.T, s storage.Store) {
	ctx := context.Background()
	const n = 1100 // more than one S3 list page (1000)
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("many/%04x/%06d", i%7, i))
	}
	var g errgroup.Group
	g.SetLimit(16)
	for i, k := range want {
		g.Go(func() error {
			data := []byte(fmt.Sprint(i))
			_, err := s.PutIfAbsent(ctx, k, bytes.NewReader(data), int64(len(data)), nil)
			return err
		})
	}
	put(t, s, "manx", []byte("outside"), nil)
	put(t, s, "man", []byte("outside"), nil)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(want)
	var got []string
	if err := s.List(ctx, "many/", func(i storage.Info) error {
		if i.Size == 0 {
			return fmt.Errorf("%s listed with size 0", i.Key)
		}
		got = append(got, i.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("List(many/) returned %d keys, want %d in lexical order", len(got), len(want))
	}
	stop := errors.New("stop")
	seen := 0
	err := s.List(ctx, "many/", func(storage.Info) error {
		seen++
		if seen == 10 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || seen != 10 {
		t.Fatalf("List stopped by its callback: err=%v after %d keys", err, seen)
	}
}

func testListOrder(t *testing.T, s storage.Store) {
	ctx := context.Background()
	// '-' and '.' sort before '/', '0' after it: a file system walk that
	// visits a folder before its siblings would get this wrong.
	for _, k := range []string{"p/ab/x", "p/a/b", "p/a0", "p/a-c", "p/b", "q/a", "p/a.d"} {
		put(t, s, k, []byte(k), nil)
	}
	var got []string
	if err := s.List(ctx, "p/a", func(i storage.Info) error { got = append(got, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"p/a-c", "p/a.d", "p/a/b", "p/a0", "p/ab/x"}; !slices.Equal(got, want) {
		t.Fatalf("List(p/a) = %v, want %v", got, want)
	}
	got = nil
	if err := s.List(ctx, "", func(i storage.Info) error { got = append(got, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"p/a-c", "p/a.d", "p/a/b", "p/a0", "p/ab/x", "p/b", "q/a"}; !slices.Equal(got, want) {
		t.Fatalf("List(\"\") = %v, want %v", got, want)
	}
}

func testCancel(t *testing.T, s storage.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := random(t, 1<<20)
	if _, err := s.PutIfAbsent(ctx, "cancelled", bytes.NewReader(data), int64(len(data)), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("PutIfAbsent with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := s.Stat(context.Background(), "cancelled"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a cancelled put left an object: Stat = %v", err)
	}
	if _, _, err := s.Get(ctx, "cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with a cancelled context = %v, want context.Canceled", err)
	}

	// Cancel in the middle of a listing.
	for i := range 30 {
		put(t, s, fmt.Sprintf("list/%02d", i), []byte("x"), nil)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	seen := 0
	err := s.List(ctx, "list/", func(storage.Info) error {
		seen++
		if seen == 5 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("List cancelled after 5 keys = %v (saw %d), want context.Canceled", err, seen)
	}
	if seen >= 30 {
		t.Fatalf("List went on to all %d keys after cancellation", seen)
	}
}

// testDeleteBatch covers storage.DeleteBatch: the store's own batched delete
// when it has one (more keys than one S3 DeleteObjects request takes), the
// one-by-one fallback otherwise.
func testDeleteBatch(t *testing.T, s storage.Store) {
	ctx := context.Background()
	const n = 1050
	var keys []string
	var g errgroup.Group
	g.SetLimit(16)
	for i := range n {
		k := fmt.Sprintf("batch/%02x/%06d", i%5, i)
		keys = append(keys, k)
		g.Go(func() error {
			_, err := s.PutIfAbsent(ctx, k, bytes.NewReader([]byte("x")), 1, nil)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "batch-kept", []byte("kept"), nil)
	put(t, s, "batch/kept", []byte("kept"), nil)
	// Missing keys among them are not an error.
	doomed := append(slices.Clone(keys), "batch/never-written", "batch/zz/missing")
	if err := storage.DeleteBatch(ctx, s, doomed); err != nil {
		t.Fatalf("DeleteBatch(%d keys): %v", len(doomed), err)
	}
	var left []string
	if err := s.List(ctx, "batch", func(i storage.Info) error { left = append(left, i.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"batch-kept", "batch/kept"}; !slices.Equal(left, want) {
		t.Fatalf("after DeleteBatch %d keys remain (%v…), want %v", len(left), left[:min(len(left), 5)], want)
	}
	if err := storage.DeleteBatch(ctx, s, nil); err != nil {
		t.Fatalf("DeleteBatch(nothing) = %v", err)
	}
	if err := storage.DeleteBatch(ctx, s, []string{"batch/kept", "../escape"}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("DeleteBatch with an invalid key = %v, want ErrInvalidKey", err)
	}
	// The key can be created again.
	put(t, s, keys[0], []byte("again"), nil)
}

// testListWithMetadata: a MetadataLister lists what List lists, and any
// metadata it returns is the object's.
func testListWithMetadata(t *testing.T, s storage.Store) {
	ml, ok := s.(storage.MetadataLister)
	if !ok {
		t.Skip("the store has no metadata listing")
	}
	ctx := context.Background()
	put(t, s, "meta/a", []byte("a"), storage.Metadata{"algorithm": "sha256", "size": "12"})
	put(t, s, "meta/b", []byte("bb"), nil)
	put(t, s, "metaz", []byte("z"), storage.Metadata{"size": "1"})
	var got []storage.Info
	if err := ml.ListWithMetadata(ctx, "meta/", func(i storage.Info) error { got = append(got, i); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key != "meta/a" || got[1].Key != "meta/b" || got[0].Size != 1 || got[1].Size != 2 {
		t.Fatalf("ListWithMetadata(meta/) = %+v", got)
	}
	if m := got[0].Metadata; m != nil && (m["algorithm"] != "sha256" || m["size"] != "12") {
		t.Fatalf("listed metadata of meta/a = %v", m)
	}
	if m := got[1].Metadata; len(m) != 0 {
		t.Fatalf("listed metadata of meta/b (none written) = %v", m)
	}
}

// testOpen covers storage.Open: the store's own Open where it is an
// Opener, Get otherwise; the same data, size and errors either way.
func testOpen(t *testing.T, s storage.Store) {
	ctx := context.Background()
	data := random(t, 100_000)
	put(t, s, "chunks/abcd/abcdef.cacnk", data, storage.Metadata{"algorithm": "sha256"})
	put(t, s, "empty", nil, nil)
	for key, want := range map[string][]byte{"chunks/abcd/abcdef.cacnk": data, "empty": nil} {
		rc, size, err := storage.Open(ctx, s, key)
		if err != nil {
			t.Fatalf("Open(%s): %v", key, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("read %s: %v", key, err)
		}
		if size != int64(len(want)) || !bytes.Equal(got, want) {
			t.Fatalf("Open(%s): size %d and %d bytes, want %d bytes as put", key, size, len(got), len(want))
		}
	}
	if _, _, err := storage.Open(ctx, s, "no/such/key"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open(missing) = %v, want ErrNotFound", err)
	}
	if _, _, err := storage.Open(ctx, s, "chunks/abcd"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open of a key that is only a prefix = %v, want ErrNotFound", err)
	}
	if _, _, err := storage.Open(ctx, s, "a/../b"); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("Open(a/../b) = %v, want ErrInvalidKey", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := storage.Open(cctx, s, "chunks/abcd/abcdef.cacnk"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Open with a cancelled context = %v, want context.Canceled", err)
	}
}
