package caproto

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests talk to the real casync binary's server side (the hidden
// "casync pull|push - ARCHIVE INDEX STORE" verbs that ssh runs remotely)
// over its stdin and stdout: our frames must be ones casync accepts, and
// its frames ones we decode.

// needCasync returns the casync binary, skipping the test if it is absent
// (failing under CI=true, where it must be installed).
func needCasync(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("casync")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("casync is not installed (CI needs the Debian package casync)")
		}
		t.Skip("casync is not installed: apt-get install casync")
	}
	return p
}

// casyncFixture makes a random blob, a store and a .caibx with casync make.
func casyncFixture(t *testing.T, bin string) (dir, index, store string) {
	t.Helper()
	dir = t.TempDir()
	blob := make([]byte, 400_000)
	rand.Read(blob)
	if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	index, store = filepath.Join(dir, "x.caibx"), filepath.Join(dir, "store.castr")
	if out, err := exec.Command(bin, "make", "--store="+store, index, filepath.Join(dir, "blob")).CombinedOutput(); err != nil {
		t.Fatalf("casync make: %v\n%s", err, out)
	}
	return dir, index, store
}

// tableIDs lists the chunk ids of a .caibx: 40-byte items from offset 64
// up to the 40-byte tail.
func tableIDs(t *testing.T, idx []byte) [][IDSize]byte {
	t.Helper()
	var ids [][IDSize]byte
	for off := 64; off+40 < len(idx); off += 40 {
		ids = append(ids, [IDSize]byte(idx[off+8:off+40]))
	}
	if len(ids) == 0 {
		t.Fatal("index has no chunks")
	}
	return ids
}

func chunkFile(store string, id [IDSize]byte) string {
	h := hex.EncodeToString(id[:])
	return filepath.Join(store, h[:4], h+".cacnk")
}

type peer struct {
	cmd    *exec.Cmd
	r      *Reader
	w      *Writer
	stdin  io.WriteCloser
	stderr bytes.Buffer
}

func startCasync(t *testing.T, bin string, args ...string) *peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	p := &peer{cmd: exec.CommandContext(ctx, bin, args...)}
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.r, p.w = NewReader(out, 0), NewWriter(p.stdin)
	return p
}

func (p *peer) send(t *testing.T, ms ...Message) {
	t.Helper()
	for _, m := range ms {
		if err := p.w.WriteMessage(m); err != nil {
			t.Fatalf("writing %s: %v", m.Type(), err)
		}
	}
	if err := p.w.Flush(); err != nil {
		t.Fatalf("flush: %v (casync said: %s)", err, p.stderr.String())
	}
}

func (p *peer) recv(t *testing.T) Message {
	t.Helper()
	m, err := p.r.ReadMessage()
	if err != nil {
		t.Fatalf("reading from casync: %v (casync said: %s)", err, p.stderr.String())
	}
	return m
}

func (p *peer) hello(t *testing.T, local, want Features) {
	t.Helper()
	p.send(t, &Hello{Features: local})
	h, ok := p.recv(t).(*Hello)
	if !ok || h.Features != want {
		t.Fatalf("casync's first frame: %#v, want HELLO %s", h, want)
	}
	if err := CheckHandshake(local, h.Features); err != nil {
		t.Fatal(err)
	}
}

// TestCasyncServesPull: index and chunks pulled from casync's own server.
func TestCasyncServesPull(t *testing.T) {
	bin := needCasync(t)
	_, index, store := casyncFixture(t, bin)
	want, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	p := startCasync(t, bin, "pull", "-", "-", index, store)
	p.hello(t, PullChunks|PullIndex, ReadableStore|ReadableIndex)

	var got []byte
	for {
		m := p.recv(t)
		if _, eof := m.(*IndexEOF); eof {
			break
		}
		got = append(got, m.(*Index).Data...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("INDEX frames carried %d bytes, not the %d-byte index", len(got), len(want))
	}

	ids := tableIDs(t, got)
	missing := [IDSize]byte{0xde, 0xad}
	p.send(t, &Request{Flags: RequestHighPriority, IDs: append(ids, missing)})
	seen := map[[IDSize]byte]bool{}
	for range len(ids) + 1 {
		switch m := p.recv(t).(type) {
		case *Chunk:
			stored, err := os.ReadFile(chunkFile(store, m.ID))
			if err != nil {
				t.Fatalf("CHUNK for an id not in the store: %v", err)
			}
			if !m.Compressed() || !bytes.Equal(m.Data, stored) {
				t.Fatalf("CHUNK %x: flags %d, %d bytes; want compressed .cacnk bytes (%d)", m.ID[:4], m.Flags, len(m.Data), len(stored))
			}
			seen[m.ID] = true
		case *Missing:
			if m.ID != missing {
				t.Fatalf("MISSING for %x, which the store has", m.ID)
			}
			seen[m.ID] = true
		default:
			t.Fatalf("unexpected %s", m.Type())
		}
	}
	if len(seen) != len(ids)+1 {
		t.Fatalf("answers for %d distinct ids, want %d", len(seen), len(ids)+1)
	}
	p.stdin.Close() // a casync client ends a pull by closing its pipe
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("casync pull exit: %v\n%s", err, p.stderr.String())
	}
}

// TestCasyncAcceptsPush: an index pushed in ragged INDEX frames, then the
// CHUNKs casync asks for, ends in GOODBYE and a byte-identical index.
func TestCasyncAcceptsPush(t *testing.T) {
	bin := needCasync(t)
	dir, index, store := casyncFixture(t, bin)
	idx, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	out, outStore := filepath.Join(dir, "pushed.caibx"), filepath.Join(dir, "pushed.castr")
	p := startCasync(t, bin, "push", "-", "-", out, outStore)
	p.hello(t, PushChunks|PushIndex|PushIndexChunks, WritableStore|WritableIndex)

	for rest := idx; len(rest) > 0; {
		n := min(len(rest), 97) // not a multiple of the 40-byte item
		p.send(t, &Index{Data: rest[:n]})
		rest = rest[n:]
	}
	p.send(t, &IndexEOF{})

	ids := tableIDs(t, idx)
	requested := 0
	for done := false; !done; {
		switch m := p.recv(t).(type) {
		case *Request:
			if m.HighPriority() {
				t.Errorf("push REQUEST is high priority")
			}
			for _, id := range m.IDs {
				data, err := os.ReadFile(chunkFile(store, id))
				if err != nil {
					t.Fatalf("casync requested %x, not in the index's store: %v", id[:4], err)
				}
				p.send(t, &Chunk{Flags: ChunkCompressed, ID: id, Data: data})
				requested++
			}
		case *Goodbye:
			done = true
		default:
			t.Fatalf("unexpected %s", m.Type())
		}
	}
	if requested != len(ids) {
		t.Errorf("casync requested %d chunks, the index has %d", requested, len(ids))
	}
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("casync push exit: %v\n%s", err, p.stderr.String())
	}
	got, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(got, idx) {
		t.Fatalf("pushed index: %v, %d bytes, want the %d-byte original", err, len(got), len(idx))
	}
	for _, id := range ids {
		if _, err := os.Stat(chunkFile(outStore, id)); err != nil {
			t.Errorf("chunk not stored: %v", err)
		}
	}
}

// TestCasyncAcceptsAbort: casync takes our ABORT and fails with its errno.
func TestCasyncAcceptsAbort(t *testing.T) {
	bin := needCasync(t)
	_, index, store := casyncFixture(t, bin)
	p := startCasync(t, bin, "pull", "-", "-", index, store)
	p.hello(t, PullChunks|PullIndex, ReadableStore|ReadableIndex)
	p.send(t, NewAbort(13, "no access\nfor you"))
	p.stdin.Close()
	for {
		if _, err := p.r.ReadMessage(); err != nil {
			break // casync stops sending; the pipe closes
		}
	}
	err := p.cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("casync exit after ABORT: %v, want a failure\n%s", err, p.stderr.String())
	}
	if !strings.Contains(p.stderr.String(), "Permission denied") {
		t.Fatalf("casync did not report EACCES: %s", p.stderr.String())
	}
}

// TestCasyncRefusesBadHello: casync's verdict on a HELLO our reader
// refuses matches ours (it exits with an error instead of answering).
func TestCasyncRefusesBadHello(t *testing.T) {
	bin := needCasync(t)
	_, index, store := casyncFixture(t, bin)
	bad := binary.LittleEndian.AppendUint64(appendHeader(nil, 24, TypeHello), 0x2040)
	if _, err := NewReader(bytes.NewReader(bad), 0).ReadMessage(); !errors.Is(err, ErrUnsupportedFeatures) {
		t.Fatalf("our reader: %v", err)
	}
	p := startCasync(t, bin, "pull", "-", "-", index, store)
	p.stdin.Write(bad)
	p.stdin.Close()
	for {
		if _, err := p.r.ReadMessage(); err != nil {
			break
		}
	}
	if err := p.cmd.Wait(); err == nil || !strings.Contains(p.stderr.String(), "Protocol not supported") {
		t.Fatalf("casync on HELLO 0x2040: exit %v, want EPROTONOSUPPORT\n%s", err, p.stderr.String())
	}
}
