package pmx_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// As authenticates every connection as one principal, or refuses it.
func as(p auth.Principal, err error) func(*pmx.Server) {
	return func(s *pmx.Server) {
		s.Authenticate = func(*tls.ConnectionState) (auth.Principal, error) { return p, err }
	}
}

func dialClient(t *testing.T, addr string) (*pmxclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, err := pmxclient.Dial(ctx, addr, nil)
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// A connection Authenticate refuses reads an Error with the reason in
// place of Hello; nothing it could send is served.
func TestAuthenticateRefusesTheConnection(t *testing.T) {
	h := newHarness(t, as(auth.Principal{}, errors.New("no client certificate")))
	_, err := dialClient(t, h.addr)
	var se *pmxclient.ServerError
	if !errors.As(err, &se) || !strings.Contains(se.Reason, "access refused: no client certificate") {
		t.Fatalf("Dial of a refused connection: %v, want a ServerError with the reason", err)
	}
}

// A read principal restores and reads hash lists, but its CreateBackup
// and UploadChunk are refused with the reason and store nothing; an
// append principal backs up.
func TestRolesOnTheSession(t *testing.T) {
	onBothTransports(t, func(t *testing.T, tr transport) {
		// Set by the test, read by the server's connection goroutines: a
		// network round trip orders them, which the race detector cannot see.
		var who atomic.Pointer[auth.Principal]
		h := newHarnessOn(t, tr, func(s *pmx.Server) {
			s.Authenticate = func(*tls.ConnectionState) (auth.Principal, error) { return *who.Load(), nil }
		})
		data := bytes.Repeat([]byte("roles on a PMXBCKUP session "), 40000)
		ctx := t.Context()

		who.Store(&auth.Principal{Name: "host-1", Tenant: auth.DefaultTenant, Role: auth.RoleAppend})
		appender, err := dialClient(t, h.addr)
		if err != nil {
			t.Fatal(err)
		}
		sum, err := pmxclient.Backup(ctx, appender, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "h1", Name: "data", Input: bytes.NewReader(data), Size: int64(len(data))})
		if err != nil {
			t.Fatalf("backup as append: %v", err)
		}

		who.Store(&auth.Principal{Name: "reader", Tenant: auth.DefaultTenant, Role: auth.RoleRead})
		reader, err := dialClient(t, h.addr)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if _, err := pmxclient.Restore(ctx, reader, sum.Path, &out, nil); err != nil || !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("restore as read: %v (equal %v)", err, bytes.Equal(out.Bytes(), data))
		}
		if d, err := reader.HashList(ctx, sum.Path); err != nil || len(d) == 0 {
			t.Fatalf("hash list as read: %d digests, %v", len(d), err)
		}
		_, err = pmxclient.Backup(ctx, reader, pmxclient.BackupOptions{Type: pmxproto.BackupHost, ID: "h2", Name: "data", Input: bytes.NewReader([]byte("x")), Size: 1})
		var se *pmxclient.ServerError
		if !errors.As(err, &se) || !strings.Contains(se.Reason, "reader may not add snapshots") || !strings.Contains(se.Reason, "role read") {
			t.Fatalf("backup as read: %v, want CreateBackup refused naming the principal and role", err)
		}
		chunk := []byte("a chunk a read principal may not store")
		reader.Upload(ctx, sha256.Sum256(chunk), chunk)
		if err := reader.Wait(ctx); !errors.As(err, &se) || !strings.Contains(se.Reason, "may not add chunks") {
			t.Fatalf("upload as read: %v, want refused", err)
		}

		snaps, err := h.catalog.ListSnapshots(ctx, &chunkbridgev1.ListSnapshotsRequest{})
		if err != nil || len(snaps.Snapshots) != 1 {
			t.Fatalf("snapshots: %v %v; want only the append principal's", snaps, err)
		}
		// The refused chunk is not stored: the append principal's next
		// backup's hash list never names it, and a download fails.
		err = reader.Download(ctx, []pmxclient.Digest{sha256.Sum256(chunk)}, func(int, []byte) error { return nil })
		if err == nil {
			t.Fatal("a chunk refused to a read principal was stored")
		}
	})
}
