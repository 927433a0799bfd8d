package pmxclient_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format/chunker"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/pmxclient"
	"github.com/chunkbridge/chunkbridge/pmxclient/pmxtest"
)

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// fixedDigests is what a fixed backup of data must index.
func fixedDigests(data []byte, size int) []pmxproto.Digest {
	ds := []pmxproto.Digest{}
	for len(data) > 0 {
		n := min(size, len(data))
		ds = append(ds, sha256.Sum256(data[:n]))
		data = data[n:]
	}
	return ds
}

// casyncDigests is what `casync make --digest=sha256` indexes: casync's
// chunker at 16/64/256 KiB, SHA-256 ids.
func casyncDigests(t *testing.T, data []byte) []pmxproto.Digest {
	ch, err := chunker.New(bytes.NewReader(data), 16<<10, 64<<10, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	ds := []pmxproto.Digest{}
	for {
		c, err := ch.Next()
		if err == io.EOF {
			return ds
		}
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, sha256.Sum256(c))
	}
}

var snapTime = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func backup(t *testing.T, p *pmxtest.Peer, c *pmxclient.Client, opts pmxclient.BackupOptions) *pmxclient.BackupSummary {
	t.Helper()
	sum, err := pmxclient.Backup(ctxT(t), c, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.File(sum.Path); !ok {
		t.Fatalf("summary names %s, which the peer did not publish", sum.Path)
	}
	return sum
}

func restore(t *testing.T, c *pmxclient.Client, path string) []byte {
	t.Helper()
	var out bytes.Buffer
	sum, err := pmxclient.Restore(ctxT(t), c, path, &out, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum.BytesWritten != int64(out.Len()) {
		t.Fatalf("restore summary says %d bytes, wrote %d", sum.BytesWritten, out.Len())
	}
	return out.Bytes()
}

func TestBackupFixedSizes(t *testing.T) {
	const cs = 1000
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	for i, size := range []int{0, 1, cs - 1, cs, cs + 1, 3*cs + 5} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := randomBytes(uint64(size), size)
			sum := backup(t, p, c, pmxclient.BackupOptions{
				Type: pmxproto.BackupVM, ID: "100", Name: "disk.img", Fixed: true, ChunkSize: cs,
				Input: bytes.NewReader(data), Size: int64(size), Time: snapTime.Add(time.Duration(i) * time.Second),
			})
			if want := fmt.Sprintf("vm/100/%s/disk.img.fidx", snapTime.Add(time.Duration(i)*time.Second).Format(time.RFC3339)); sum.Path != want {
				t.Fatalf("Path = %q, want %q", sum.Path, want)
			}
			got, _ := p.File(sum.Path)
			want := fixedDigests(data, cs)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("index has %d digests %v, want %d %v", len(got), got, len(want), want)
			}
			if sum.Chunks != int64(len(want)) || sum.BytesRead != int64(size) {
				t.Fatalf("summary: %d chunks, %d bytes; want %d, %d", sum.Chunks, sum.BytesRead, len(want), size)
			}
			if back := restore(t, c, sum.Path); !bytes.Equal(back, data) {
				t.Fatalf("restored %d bytes, differ from the %d backed up", len(back), size)
			}
		})
	}
}

func TestBackupFixedDefaultChunkSize(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(7, 2*pmxclient.DefaultFixedChunkSize+123)
	sum := backup(t, p, c, pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "100", Name: "disk.img", Fixed: true,
		Input: bytes.NewReader(data), Size: int64(len(data)), Time: snapTime})
	got, _ := p.File(sum.Path)
	if want := fixedDigests(data, pmxclient.DefaultFixedChunkSize); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("index %v, want %v", got, want)
	}
	if !bytes.Equal(restore(t, c, sum.Path), data) {
		t.Fatal("restore differs")
	}
}

func TestBackupDynamicMatchesCasyncChunks(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(1, 3<<20+17)
	var progress []pmxclient.Stats
	sum := backup(t, p, c, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "web-01", Name: "root.pxar",
		Input: bytes.NewReader(data), Size: -1, Time: snapTime, Progress: func(s pmxclient.Stats) { progress = append(progress, s) }})
	if sum.Path != "host/web-01/2026-11-25T10:00:00Z/root.pxar.didx" {
		t.Fatalf("Path = %q", sum.Path)
	}
	got, _ := p.File(sum.Path)
	want := casyncDigests(t, data)
	if len(want) < 20 {
		t.Fatalf("only %d chunks: the test data is too small", len(want))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("index has %d chunks, casync's chunker makes %d; they differ", len(got), len(want))
	}
	if sum.Chunks != int64(len(want)) || sum.NewChunks != int64(len(want)) || sum.Base != "" {
		t.Fatalf("summary %+v: want a full backup of %d chunks", sum, len(want))
	}
	if len(progress) == 0 || progress[len(progress)-1].BytesRead != int64(len(data)) {
		t.Fatalf("progress %v: want a final report of all %d bytes", progress, len(data))
	}
	if !bytes.Equal(restore(t, c, sum.Path), data) {
		t.Fatal("restore differs")
	}
	line := sum.String()
	if !strings.HasPrefix(line, "snapshot host/web-01/2026-11-25T10:00:00Z/root.pxar.didx: 3.0 MiB in ") ||
		!strings.Contains(line, fmt.Sprintf(", %d chunks: %d uploaded (", len(want), len(want))) ||
		!strings.Contains(line, ", 0 already stored (no earlier snapshot of this file: every distinct chunk was sent") {
		t.Fatalf("summary line %q", line)
	}
}

func TestBackupIncrementalFixed(t *testing.T) {
	const cs = 4096
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(2, 20*cs)
	opts := func(i int) pmxclient.BackupOptions {
		return pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "100", Name: "disk.img", Fixed: true, ChunkSize: cs,
			Input: bytes.NewReader(data), Size: int64(len(data)), Time: snapTime.Add(time.Duration(i) * time.Second)}
	}
	first := backup(t, p, c, opts(0))
	if first.NewChunks != 20 || p.Uploads() != 20 || first.Base != "" {
		t.Fatalf("first backup: %+v, %d uploads; want 20 new chunks, full", first, p.Uploads())
	}
	copy(data[3*cs:], "changed")
	copy(data[17*cs+100:], "changed too")
	second := backup(t, p, c, opts(1))
	if n := p.Uploads() - 20; n != 2 {
		t.Fatalf("second backup uploaded %d chunks, want exactly the 2 changed ones", n)
	}
	if second.NewChunks != 2 || second.ReusedChunks != 18 || second.BaseChunks != 20 ||
		second.Base != "vm/100/latest/disk.img.fidx" || second.BytesUploaded != 2*cs {
		t.Fatalf("second backup summary %+v", second)
	}
	if r := second.DedupRatio(); r != 10 {
		t.Fatalf("dedup ratio %v, want 10", r)
	}
	// The summary names what was sent and what was known to be stored,
	// and claims no more.
	if line := second.String(); !strings.HasSuffix(line, ", 20 chunks: 2 uploaded (8.0 KiB), 18 already stored") {
		t.Fatalf("summary line %q", line)
	}
	if !bytes.Equal(restore(t, c, second.Path), data) {
		t.Fatal("restore of the incremental backup differs")
	}
	// The first snapshot is intact.
	got, _ := p.File(first.Path)
	if len(got) != 20 {
		t.Fatalf("first snapshot has %d digests", len(got))
	}
}

func TestBackupDedupWithinRun(t *testing.T) {
	const cs = 1000
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := make([]byte, 10*cs+1) // ten equal blocks and a short one
	sum := backup(t, p, c, pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "1", Name: "zero.img", Fixed: true, ChunkSize: cs,
		Input: bytes.NewReader(data), Size: int64(len(data)), Time: snapTime})
	if p.Uploads() != 2 || sum.NewChunks != 2 || sum.ReusedChunks != 9 {
		t.Fatalf("%d uploads, summary %+v; want 2 uploads, 9 reused", p.Uploads(), sum)
	}
}

func TestBackupIncrementalDynamic(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(3, 2<<20)
	opts := func(i int, data []byte) pmxclient.BackupOptions {
		return pmxclient.BackupOptions{Type: pmxproto.BackupCT, ID: "200", Name: "root.pxar",
			Input: bytes.NewReader(data), Size: int64(len(data)), Time: snapTime.Add(time.Duration(i) * time.Second)}
	}
	first := backup(t, p, c, opts(0, data))
	n0 := p.Uploads()
	if int64(n0) != first.NewChunks {
		t.Fatalf("%d uploads, summary says %d new", n0, first.NewChunks)
	}
	same := backup(t, p, c, opts(1, data))
	if p.Uploads() != n0 || same.NewChunks != 0 || same.ReusedChunks != first.Chunks {
		t.Fatalf("unchanged data: %d uploads, summary %+v; want none", p.Uploads()-n0, same)
	}
	if !strings.HasSuffix(same.String(), fmt.Sprintf(" chunks: 0 uploaded (0 B), %d already stored", same.Chunks)) {
		t.Fatalf("summary line %q", same.String())
	}
	// Insert bytes in the middle: only chunks around the insertion change.
	edited := append(append(append([]byte(nil), data[:1<<20]...), "inserted"...), data[1<<20:]...)
	third := backup(t, p, c, opts(2, edited))
	want := casyncDigests(t, edited)
	old := map[pmxproto.Digest]bool{}
	for _, d := range casyncDigests(t, data) {
		old[d] = true
	}
	var fresh int
	for _, d := range want {
		if !old[d] {
			fresh++
		}
	}
	if n := p.Uploads() - n0; n != fresh || third.NewChunks != int64(fresh) || fresh == 0 || fresh > 3 {
		t.Fatalf("after an insertion: %d uploads, summary %d new; want exactly the %d changed chunks", n, third.NewChunks, fresh)
	}
	if !bytes.Equal(restore(t, c, third.Path), edited) {
		t.Fatal("restore differs")
	}
	// "latest" restores the newest.
	if !bytes.Equal(restore(t, c, "ct/200/latest/root.pxar.didx"), edited) {
		t.Fatal("restore of latest differs")
	}
}

func TestBackupFixedNeedsExactSize(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(4, 5000)
	for _, tc := range []struct {
		size int64
		want string
	}{
		{-1, "needs the input's size"},
		{4000, "longer than its size"},
		{6000, "ended after 5000 bytes"},
	} {
		_, err := pmxclient.Backup(ctxT(t), c, pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "1", Name: "d.img", Fixed: true,
			ChunkSize: 1000, Input: bytes.NewReader(data), Size: tc.size, Time: snapTime.Add(time.Duration(tc.size) * time.Second)})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("size %d: %v, want an error with %q", tc.size, err, tc.want)
		}
	}
	if files := p.Files(); len(files) != 0 {
		t.Fatalf("a failed backup published %v", files)
	}
}

type failingReader struct{ n int }

func (r *failingReader) Read(b []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(b), r.n)
	r.n -= n
	return n, nil
}

func TestBackupReadErrorPublishesNothing(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	_, err := pmxclient.Backup(ctxT(t), c, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "h", Name: "f",
		Input: &failingReader{n: 1 << 20}, Size: -1, Time: snapTime})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Backup: %v", err)
	}
	if len(p.Files()) != 0 {
		t.Fatal("a failed backup published a file")
	}
}

func TestRestoreMissingSnapshot(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	_, err := pmxclient.Restore(ctxT(t), c, "host/h/2026-01-01T00:00:00Z/nope.didx", io.Discard, nil)
	if !errors.Is(err, pmxclient.ErrNotFound) {
		t.Fatalf("Restore: %v", err)
	}
}

func TestBackupRefusesBadID(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	_, err := pmxclient.Backup(ctxT(t), c, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "../etc", Name: "f",
		Input: strings.NewReader("x"), Size: -1, Time: snapTime})
	if err == nil || !strings.Contains(err.Error(), `backup id "../etc"`) {
		t.Fatalf("Backup with a bad id: %v", err)
	}
	if c.Err() != nil {
		t.Fatalf("a refused request ended the connection: %v", c.Err())
	}
}

// blockingReader returns some data, then blocks until release is closed;
// blocked is closed when it first blocks: the backup is under way.
type blockingReader struct {
	n       int
	release chan struct{}
	blocked chan struct{}
	once    sync.Once
}

func (r *blockingReader) Read(b []byte) (int, error) {
	if r.n > 0 {
		n := min(len(b), r.n)
		r.n -= n
		return n, nil
	}
	r.once.Do(func() { close(r.blocked) })
	<-r.release
	return 0, io.EOF
}

func TestBackupCancelled(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	in := &blockingReader{n: 1 << 20, release: make(chan struct{}), blocked: make(chan struct{})}
	defer close(in.release)
	done := make(chan error, 1)
	go func() {
		_, err := pmxclient.Backup(ctx, c, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "h", Name: "f", Input: in, Size: -1, Time: snapTime})
		done <- err
	}()
	<-in.blocked // the backup has read its input and waits for more
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Backup after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Backup did not return after its context was cancelled")
	}
	if len(p.Files()) != 0 {
		t.Fatal("a cancelled backup published a file")
	}
}

// The files of one snapshot: the first is created with EXCL, the others
// join it with AddToSnapshot; without it a second file is refused.
func TestBackupSeveralFilesIntoOneSnapshot(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	root, etc := randomBytes(11, 300<<10), randomBytes(12, 5000)
	opts := func(name string, data []byte, add bool) pmxclient.BackupOptions {
		return pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "web-01", Name: name, Input: bytes.NewReader(data),
			Size: int64(len(data)), Time: snapTime, AddToSnapshot: add}
	}
	first := backup(t, p, c, opts("root.pxar", root, false))
	if _, err := pmxclient.Backup(ctxT(t), c, opts("etc.pxar", etc, false)); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("a second exclusive file: %v, want the snapshot refused as existing", err)
	}
	second := backup(t, p, c, opts("etc.pxar", etc, true))
	if want := "host/web-01/2026-11-25T10:00:00Z/etc.pxar.didx"; second.Path != want || first.Path != "host/web-01/2026-11-25T10:00:00Z/root.pxar.didx" {
		t.Fatalf("paths %s and %s, want both in one snapshot", first.Path, second.Path)
	}
	if !bytes.Equal(restore(t, c, first.Path), root) || !bytes.Equal(restore(t, c, second.Path), etc) {
		t.Fatal("a file of the snapshot restores differently")
	}
}

// The files of one run share what is known to be stored: a chunk the
// first file uploaded is not sent again for the second.
func TestBackupSharesKnownChunksAcrossFiles(t *testing.T) {
	p := pmxtest.NewPeer(t)
	c := p.Dial(t)
	data := randomBytes(13, 8<<10)
	known := map[pmxclient.Digest]struct{}{}
	for i, name := range []string{"a.img", "b.img"} {
		sum := backup(t, p, c, pmxclient.BackupOptions{Type: pmxproto.BackupVM, ID: "1", Name: name, Fixed: true, ChunkSize: 4096,
			Input: bytes.NewReader(data), Size: int64(len(data)), Time: snapTime, AddToSnapshot: i > 0, Known: known})
		if want := int64(2 * (1 - i)); sum.NewChunks != want || sum.ReusedChunks != 2-want {
			t.Fatalf("%s: %d chunks uploaded, %d reused; want %d uploaded", name, sum.NewChunks, sum.ReusedChunks, want)
		}
	}
	if p.Uploads() != 2 {
		t.Fatalf("%d uploads for two files of the same 2 chunks, want 2", p.Uploads())
	}
}
